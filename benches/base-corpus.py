#!/usr/bin/env python3
"""Builds the corpus the built-in base model is trained on (README, "The built-in base model").

Usage: benches/base-corpus.py AVIARY OUT_DIR   (from the repository root, with ../shared/data)

Writes OUT_DIR/base_corpus.txt (one tweet per line, shuffled) from
- the four general corpora of ../shared/data, less the tweets the first base model held out
  (so that `aviary eval --corpus OUT_DIR/general.txt --split text` scores every base model on
  the same held-out tweets), and
- every single-account collection and export there, imported and cleaned by aviary itself
  (`aviary import` with the default cleaning policy, into a scratch home), except the accounts
  README's quality figures are measured on (their tweets must stay unseen) and the two archives
  in Russian and Japanese (the base vocabulary is for Latin script);
and OUT_DIR/general.txt, the four general corpora as the first base model read them.
"""
import csv, glob, os, random, sqlite3, subprocess, sys

aviary, out = sys.argv[1], sys.argv[2]
data = '../shared/data'
os.makedirs(out, exist_ok=True)

# The accounts README's quality figures use: never in the base corpus.
HELD_OUT_ACCOUNTS = ['neiltyson', 'TheOnion', 'NASA', 'BarackObama', 'andreruffert']
SKIPPED = ['xarchive-vovavasilina', 'xarchive2020-dsajgiouawj']


def general():
    d = data
    t = [l for f in sorted(glob.glob(f'{d}/base-tweeteval/datasets/*/*_text.txt')) for l in open(f).read().splitlines()]
    t += [l for f in ['positive', 'negative'] for l in open(f'{d}/base-sentiment140-100k/{f}.txt', errors='replace').read().splitlines()]
    t += [r['text'] for r in csv.DictReader(open(f'{d}/base-tweet-sentiment-extraction/Tweets.csv'))]
    t += [p[2] for f in ['training', 'test'] for l in open(f'{d}/base-cikm2010-fragment/{f}_set_tweets.txt', errors='replace')
          if len(p := l.rstrip('\n').split('\t')) >= 3]
    t = [' '.join(x.split()) for x in t]
    random.Random(7).shuffle(t := [x for x in t if x])
    return t


def held_out_by_text(tweet, fraction=0.1):
    """aviary's `--split text`: FNV-1a of the UTF-8 text."""
    h = 0xcbf29ce484222325
    for b in tweet.encode():
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h % 1_000_000 < fraction * 1_000_000


def account_sources():
    for f in sorted(glob.glob(f'{data}/accounts-*/*.csv') + glob.glob(f'{data}/accounts-*/*.json')
                    + glob.glob(f'{data}/account-*/*.json')):
        yield os.path.basename(f).split('.')[0].split('_tweets')[0], f
    for d in sorted(glob.glob(f'{data}/xarchive*') + glob.glob(f'{data}/grailbird-*')):
        yield os.path.basename(d).split('-', 1)[1], d
    for d in sorted(glob.glob(f'{data}/api*')):
        yield os.path.basename(d), d


def accounts():
    home = os.path.join(out, 'home')
    env = dict(os.environ, AVIARY_HOME=home)
    texts = []
    for k, (name, path) in enumerate(account_sources()):
        if any(h.lower() in name.lower() for h in HELD_OUT_ACCOUNTS) or any(s in path for s in SKIPPED):
            print(f'skip {path}', file=sys.stderr)
            continue
        bot = f'a{k}'
        subprocess.run([aviary, 'bot', 'new', bot], env=env, check=True, capture_output=True)
        if os.path.isfile(path) or os.path.isdir(f'{path}/data'):
            imports = [[path]]  # a file, or an archive folder (aviary finds its tweets)
        else:  # a folder of API samples: each file on its own; some are not tweets at all
            imports = [[f] for f in sorted(glob.glob(f'{path}/*.json*'))]
        for files in imports:
            r = subprocess.run([aviary, 'import', bot, *files], env=env, capture_output=True, text=True)
            said = r.stdout.splitlines()[2].strip() if r.returncode == 0 else r.stderr.splitlines()[0]
            print(f'{files[0]}: {said}', file=sys.stderr)
    db = sqlite3.connect(os.path.join(home, 'aviary.db'))
    texts = [t for (t,) in db.execute('SELECT text FROM tweets WHERE kept = 1 ORDER BY id')]
    return texts


gen = general()
open(os.path.join(out, 'general.txt'), 'w').write('\n'.join(gen) + '\n')
acc = accounts()
seen, corpus = set(), []
for t in [x for x in gen if not held_out_by_text(x)] + acc:
    if t not in seen:
        seen.add(t)
        corpus.append(t)
random.Random(11).shuffle(corpus)
open(os.path.join(out, 'base_corpus.txt'), 'w').write('\n'.join(corpus) + '\n')
print(f'{len(corpus)} tweets, {sum(len(t) for t in corpus)} characters '
      f'({len(acc)} from accounts)', file=sys.stderr)
