#!/usr/bin/env python3
"""Blind-read lists for docs/quality.md: for each bot, its shown candidates (a file of one
text per line, or the bot's newest N stored candidates) mixed with as many of the bot's real
held-out tweets (the validation split `aviary eval` reads: FNV-1a of the folded text mod 10^6
below 100,000), shuffled with a fixed seed per bot. Writes LIST_DIR/BOT.txt (what a reader
sees: numbered texts only) and LIST_DIR/BOT.key.json (which number is which).

Usage: blind-lists.py HOME LIST_DIR BOT[=CANDIDATES_FILE] ...   (needs sqlite3 in Python)
"""
import json, os, random, sqlite3, sys


def fold_for_split(tweet):
    words, cur = [], []
    for c in tweet:
        if c.isalnum():
            cur.append(c)
        elif cur:
            words.append("".join(cur)); cur = []
    if cur:
        words.append("".join(cur))
    out = " ".join(w.lower() for w in words)
    return out if out else tweet


def fnv1a(b):
    h = 0xCBF29CE484222325
    for x in b:
        h ^= x
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def held_out(tweet):
    return fnv1a(fold_for_split(tweet).encode()) % 1_000_000 < 100_000


def main():
    home, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    db = sqlite3.connect(os.path.join(home, "aviary.db"))
    for k, arg in enumerate(sys.argv[3:]):
        bot, _, path = arg.partition("=")
        (bot_id,) = db.execute("SELECT id FROM bots WHERE name = ?", (bot,)).fetchone()
        if path:
            cands = [l.rstrip("\n") for l in open(path) if l.strip()]
        else:
            cands = [r[0] for r in db.execute(
                "SELECT text FROM candidates WHERE bot_id = ? ORDER BY id DESC LIMIT 10", (bot_id,))][::-1]
        if not cands:
            sys.exit(f"{bot}: no candidates (run `aviary generate --bot {bot} -n 10 --seed 1` first)")
        real = [r[0] for r in db.execute(
            "SELECT text FROM tweets WHERE bot_id = ? AND kept = 1 ORDER BY id", (bot_id,))]
        real = [t for t in real if held_out(t)]
        rng = random.Random(20261203 + k)
        picked = rng.sample(real, len(cands))
        items = [(t, "candidate") for t in cands] + [(t, "real") for t in picked]
        rng.shuffle(items)
        with open(os.path.join(out, bot + ".txt"), "w") as f:
            for i, (t, _) in enumerate(items, 1):
                f.write(f"{i}. {' '.join(t.split())}\n")
        with open(os.path.join(out, bot + ".key.json"), "w") as f:
            json.dump([{"n": i, "kind": kind, "text": t} for i, (t, kind) in enumerate(items, 1)], f, indent=1)


if __name__ == "__main__":
    main()
