//! Bots that sound like their account, as a user gets them: a small base model trained on a
//! general corpus, a bot fine-tuned from it on an account's tweets (characters the base lacks
//! read as unknown, and said so), the evaluation table, an interrupted fine-tune resumed, and
//! candidates that are stored, new, and never copies.

mod common;

use std::path::Path;

use aviary::store::Store;

use common::{aviary_at as aviary, ok, TINY};

/// An account with a voice of its own, and two characters (ü, €) the base never saw.
fn account_tweets(n: usize) -> Vec<String> {
    let who = ["Our bakery", "The night shift", "Grandma Ute", "This café"];
    let what = [
        "proudly serves",
        "now bakes",
        "still sells",
        "happily makes",
    ];
    let food = ["pretzels", "rye bread", "apple strudel", "poppy seed rolls"];
    (0..n)
        .map(|i| {
            format!(
                "{} {} fresh {} in Zürich for €{} only",
                who[i % 4],
                what[(i / 4) % 4],
                food[(i / 16) % 4],
                i % 9 + 1
            )
        })
        .collect()
}

/// A home with a small base model and a bot `bakery` holding the account's tweets.
fn setup(tmp: &Path) -> (std::path::PathBuf, String) {
    let home = tmp.join("home");
    let general = common::corpus_file(tmp, "general.txt", 1500);
    let base = tmp.join("base");
    let mut args = vec![
        "base",
        "train",
        "--corpus",
        general.to_str().unwrap(),
        "--checkpoint-dir",
        base.to_str().unwrap(),
        "--max-steps",
        "120",
        "--val-every",
        "40",
        "--learning-rate",
        "0.005",
    ];
    args.extend(TINY);
    ok(aviary(&home, &args));
    let account = tmp.join("bakery.txt");
    std::fs::write(&account, account_tweets(400).join("\n")).unwrap();
    ok(aviary(&home, &["bot", "new", "bakery"]));
    ok(aviary(
        &home,
        &["import", "bakery", account.to_str().unwrap()],
    ));
    (home, base.to_str().unwrap().to_string())
}

/// The "val loss" column of `aviary eval`'s row for `model`.
fn eval_loss(table: &str, model: &str) -> f64 {
    let row = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(model))
        .unwrap_or_else(|| panic!("no row {model} in:\n{table}"));
    row.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn finetuning_beats_the_base_and_says_what_it_cannot_read() {
    let tmp = tempfile::tempdir().unwrap();
    let (home, base) = setup(tmp.path());

    let (out, err) = ok(aviary(
        &home,
        &["finetune", "bakery", "--from", &base, "--lr", "0.005"],
    ));
    // The base model's vocabulary is the general corpus's characters: the account's others
    // (ü, €, capitals the grammar never uses) are read as unknown, and counted.
    let general: std::collections::HashSet<char> = common::tweets(1500).concat().chars().collect();
    let account = account_tweets(400).concat();
    let unknown: Vec<char> = account.chars().filter(|c| !general.contains(c)).collect();
    let distinct: std::collections::HashSet<&char> = unknown.iter().collect();
    assert!(distinct.contains(&'ü') && distinct.contains(&'€'));
    let line = err
        .lines()
        .find(|l| l.contains("not in the model's vocabulary"))
        .unwrap_or_else(|| panic!("no unknown-character report:\n{err}"));
    assert!(
        line.starts_with(&format!(
            "{} characters of the tweets ({} distinct)",
            unknown.len(),
            distinct.len()
        )),
        "{line}"
    );
    assert!(
        out.contains("stopped early") || out.contains("done;"),
        "fine-tuning should end by itself:\n{out}"
    );
    let (show, _) = ok(aviary(&home, &["bot", "show", "bakery"]));
    assert!(show.contains("finetune finished"), "{show}");
    let card: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(home.join("bots/bakery/model/card.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        card["training"]["init_from"],
        base.as_str(),
        "the card says where it started"
    );

    let (table, _) = ok(aviary(&home, &["eval", "bakery", "--scratch"]));
    let rows: Vec<&str> = table
        .lines()
        .skip_while(|l| !l.starts_with("model"))
        .collect();
    assert!(
        rows[0].contains("per window")
            && rows[0].contains("per tweet")
            && rows[0].contains("vocab"),
        "{table}"
    );
    assert_eq!(rows.len(), 4, "bot, base and scratch rows:\n{table}");
    let (mine, base_loss) = (eval_loss(&table, "bakery"), eval_loss(&table, "base"));
    let scratch = eval_loss(&table, "scratch");
    assert!(
        mine < base_loss - 0.5 && mine < scratch,
        "fine-tuned {mine} vs base {base_loss} and scratch {scratch}:\n{table}"
    );
}

#[test]
fn an_interrupted_finetune_resumes_where_it_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let (home, base) = setup(tmp.path());
    let (out, _) = ok(aviary(
        &home,
        &["finetune", "bakery", "--from", &base, "--max-steps", "5"],
    ));
    assert!(out.contains("--restore"), "{out}");
    let o = aviary(&home, &["finetune", "bakery", "--from", &base]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--replace"));

    let (out, err) = ok(aviary(
        &home,
        &["finetune", "bakery", "--restore", "--max-steps", "9"],
    ));
    assert!(err.contains("resuming at step 5"), "{err}");
    assert!(out.contains("finished at step 9"), "{out}");
    // The same fine-tune without the interruption ends with the same weights, bit for bit.
    let account = tmp.path().join("bakery.txt");
    ok(aviary(&home, &["bot", "new", "straight"]));
    ok(aviary(
        &home,
        &["import", "straight", account.to_str().unwrap()],
    ));
    ok(aviary(
        &home,
        &["finetune", "straight", "--from", &base, "--max-steps", "9"],
    ));
    let state = |bot: &str| {
        let path = home.join(format!("bots/{bot}/model/state.safetensors"));
        let (t, _) =
            aviary::model::checkpoint::load_tensors(&path, &candle_core::Device::Cpu).unwrap();
        let mut v: Vec<(String, Vec<f32>)> = t
            .into_iter()
            .filter(|(k, _)| k.starts_with("weights."))
            .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let (resumed, straight) = (state("bakery"), state("straight"));
    assert!(!resumed.is_empty());
    assert!(
        resumed == straight,
        "the resumed fine-tune's weights differ from the straight one's"
    );
    let store = Store::open(&home.join("aviary.db")).unwrap();
    let runs = store
        .runs(store.bot("bakery").unwrap().unwrap().id)
        .unwrap();
    let summary: Vec<(&str, &str, Option<u64>)> = runs
        .iter()
        .map(|r| (r.kind.as_str(), r.status.as_str(), r.steps))
        .collect();
    assert_eq!(
        summary,
        [
            ("finetune", "stopped", Some(5)),
            ("finetune", "failed", Some(0)),
            ("finetune", "stopped", Some(9))
        ]
    );
    drop(store);
    // --replace starts over.
    let (_, err) = ok(aviary(
        &home,
        &[
            "finetune",
            "bakery",
            "--from",
            &base,
            "--replace",
            "--max-steps",
            "2",
        ],
    ));
    assert!(!err.contains("resuming"), "{err}");
}

#[test]
fn candidates_are_stored_new_and_never_copies() {
    let tmp = tempfile::tempdir().unwrap();
    let (home, base) = setup(tmp.path());
    ok(aviary(
        &home,
        &["finetune", "bakery", "--from", &base, "--lr", "0.005"],
    ));
    let training = account_tweets(400);

    let (out, err) = ok(aviary(
        &home,
        &[
            "generate",
            "--bot",
            "bakery",
            "-n",
            "6",
            "--seed",
            "3",
            "--temperature",
            "1.0",
        ],
    ));
    assert!(err.contains("new candidates for bakery"), "{err}");
    // id, score, novelty, text; best score first.
    let lines: Vec<(i64, f64, String)> = out
        .lines()
        .map(|l| {
            let mut f = l.splitn(4, '\t');
            let id = f.next().unwrap().parse().unwrap();
            let _score: f64 = f.next().unwrap().parse().unwrap();
            let novelty = f.next().unwrap().parse().unwrap();
            (id, novelty, f.next().unwrap().to_string())
        })
        .collect();
    assert!(!lines.is_empty(), "{err}");
    for (_, novelty, text) in &lines {
        assert!(*novelty > 0.2 - 1e-9, "{novelty} {text}");
        assert!(!training.contains(text), "a copy got through: {text}");
        assert!(
            text.chars().count() >= 10 && text.chars().count() <= 280,
            "{text}"
        );
    }
    let store = Store::open(&home.join("aviary.db")).unwrap();
    let bot = store.bot("bakery").unwrap().unwrap();
    let stored = store.candidates(bot.id).unwrap();
    assert_eq!(stored.len(), lines.len());
    for (c, (id, _, text)) in stored.iter().zip(&lines) {
        assert_eq!((&c.id, &c.text, c.status.as_str()), (id, text, "new"));
        let sampling: serde_json::Value = serde_json::from_str(&c.sampling).unwrap();
        assert_eq!(sampling["temperature"], 1.0);
        assert_eq!(sampling["seed"], 3);
    }
    drop(store);

    // Review: approve, reject and edit, all kept in the store.
    let ids: Vec<String> = lines.iter().map(|l| l.0.to_string()).collect();
    assert!(ids.len() >= 3, "too few candidates to review: {out}");
    ok(aviary(
        &home,
        &["candidates", "bakery", "--approve", &ids[0]],
    ));
    ok(aviary(
        &home,
        &["candidates", "bakery", "--reject", &ids[1]],
    ));
    ok(aviary(
        &home,
        &[
            "candidates",
            "bakery",
            "--edit",
            &ids[2],
            "Fresh rye bread, said the bot",
        ],
    ));
    let long = "x".repeat(281);
    let o = aviary(&home, &["candidates", "bakery", "--edit", &ids[2], &long]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("281 of 280"), "{err}");
    let o = aviary(&home, &["candidates", "bakery", "--approve", "999999"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("no candidate 999999"));
    let (approved, _) = ok(aviary(
        &home,
        &["candidates", "bakery", "--status", "approved"],
    ));
    assert_eq!(approved.lines().count(), 1, "{approved}");
    assert!(
        approved.starts_with(&format!("{}\tapproved", ids[0])),
        "{approved}"
    );
    let (edited, _) = ok(aviary(
        &home,
        &["candidates", "bakery", "--status", "edited"],
    ));
    assert!(
        edited
            .trim_end()
            .ends_with("\tFresh rye bread, said the bot"),
        "{edited}"
    );

    // Greedy sampling (temperature 0).
    let (out, err) = ok(aviary(
        &home,
        &[
            "generate",
            "--bot",
            "bakery",
            "-n",
            "3",
            "--temperature",
            "0",
        ],
    ));
    // Greedy sampling gives every stream the same text, so every sample meets one fate:
    // kept once and repeats after that, or all dropped for one reason (a tiny model's greedy
    // loop may never end a tweet; which it does differs between CPUs).
    let kept = out.lines().count();
    assert!(kept <= 1, "{out}");
    let (sampled, drops) = sampled_and_dropped(&err);
    let total: usize = drops.iter().map(|(_, n)| n).sum();
    assert_eq!(kept + total, sampled, "{err}");
    let reasons: Vec<&str> = drops
        .iter()
        .map(|(r, _)| r.as_str())
        .filter(|r| *r != "repeat")
        .collect();
    assert!(reasons.len() + kept <= 1, "more than one text: {err}");
    for l in out.lines() {
        let text = l.splitn(4, '\t').nth(3).unwrap();
        assert!(!training.contains(&text.to_string()), "{text}");
    }
}

/// Reads `generate`'s summary line: the candidates sampled and those dropped per reason.
fn sampled_and_dropped(err: &str) -> (usize, Vec<(String, usize)>) {
    let line = err
        .lines()
        .find(|l| l.contains("(sampled "))
        .unwrap_or_else(|| panic!("no summary line: {err}"));
    let inner = line.split("(sampled ").nth(1).unwrap();
    let (sampled, rest) = inner.split_once(", dropped ").unwrap();
    let dropped = rest.split(';').next().unwrap();
    let drops = if dropped == "none" {
        Vec::new()
    } else {
        dropped
            .split(", ")
            .map(|d| {
                let (r, n) = d.rsplit_once(' ').unwrap();
                (r.to_string(), n.parse().unwrap())
            })
            .collect()
    };
    (sampled.parse().unwrap(), drops)
}

#[test]
fn search_ranks_its_trials_and_leaves_the_bots_model_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let (home, base) = setup(tmp.path());
    ok(aviary(
        &home,
        &["finetune", "bakery", "--from", &base, "--max-steps", "3"],
    ));
    let (out, err) = ok(aviary(
        &home,
        &[
            "search", "--bot", "bakery", "--trials", "3", "--budget", "3",
        ],
    ));
    assert_eq!(err.matches("trial ").count(), 3, "{err}");
    let rows: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("rank"))
        .collect();
    assert_eq!(rows.len(), 5, "header, 3 trials, the file:\n{out}");
    let losses: Vec<f64> = rows[1..4]
        .iter()
        .map(|r| r.split_whitespace().nth(6).unwrap().parse().unwrap())
        .collect();
    assert!(
        losses.windows(2).all(|w| w[0] <= w[1]),
        "not ranked: {losses:?}"
    );
    let csv = std::fs::read_to_string(home.join("bots/bakery/search/trials.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");
    assert!(
        csv.starts_with("trial,learning_rate,drop_rate,batch_size"),
        "{csv}"
    );
    // The bot still generates with its own model, fine-tuned from the same base.
    let store = Store::open(&home.join("aviary.db")).unwrap();
    let bot = store.bot("bakery").unwrap().unwrap();
    assert!(bot
        .active_checkpoint
        .unwrap()
        .ends_with("bots/bakery/model"));
    assert_eq!(bot.base_checkpoint.as_deref(), Some(base.as_str()));
    let kinds: Vec<String> = store
        .runs(bot.id)
        .unwrap()
        .into_iter()
        .map(|r| r.kind)
        .collect();
    assert_eq!(kinds, ["finetune", "search", "search", "search"]);
}

#[test]
fn a_base_model_continues_from_its_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let (home, base) = setup(tmp.path());
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(&base).join("card.json")).unwrap())
            .unwrap();
    let best = card["training"]["progress"]["best_val_loss"]
        .as_f64()
        .unwrap();
    let general = tmp.path().join("general.txt");
    let more = tmp.path().join("base-more");
    let mut args = vec![
        "base",
        "train",
        "--corpus",
        general.to_str().unwrap(),
        "--from",
        &base,
        "--checkpoint-dir",
        more.to_str().unwrap(),
        "--max-steps",
        "1",
        "--val-every",
        "1",
    ];
    args.extend(&TINY[4..]); // batch and sequence sizes; the shape comes from the base
    let (_, err) = ok(aviary(&home, &args));
    let first: f64 = err
        .lines()
        .find_map(|l| l.split("validation loss ").nth(1))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no validation:\n{err}"));
    // One step on from the base, not from random weights (about ln(vocab) = 3.6 nats).
    assert!(
        (first - best).abs() < 0.3,
        "first {first} vs base {best}:\n{err}"
    );
}

/// On real accounts in `../shared/data`, where present: the novelty filter covers every
/// training tweet whole, and keeps most of the account's held-out tweets, new text in the very
/// same voice.
#[test]
fn the_novelty_filter_on_real_accounts() {
    use aviary::corpus::{read_tweets, CleanPolicy};
    use aviary::generate::{NoveltyConfig, NoveltyIndex};
    use aviary::train::{split_of, Split, SplitRule};
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/accounts-sxywu-tweety");
    if !shared.is_dir() {
        common::skipped(&format!("{} is absent", shared.display()));
        return;
    }
    let cfg = NoveltyConfig::default();
    for account in ["neiltyson", "TheOnion", "NASA"] {
        let mut tweets = Vec::new();
        read_tweets(&shared.join(format!("{account}.csv")), None, &mut |t| {
            if let Ok(text) = CleanPolicy::default().clean(&t) {
                tweets.push(text);
            }
            Ok(())
        })
        .unwrap();
        let (train, held): (Vec<&String>, Vec<&String>) = tweets
            .iter()
            .partition(|t| split_of(t, 0.1, SplitRule::Folded) == Split::Train);
        let index = NoveltyIndex::build(train.iter().map(|t| t.as_str()), cfg.ngram);
        for t in &train {
            if t.chars().count() >= cfg.ngram {
                assert_eq!(index.overlap(t), 1.0, "{t}");
            }
        }
        let mut overlaps: Vec<f64> = held.iter().map(|t| index.overlap(t)).collect();
        overlaps.sort_by(f64::total_cmp);
        let copies = overlaps.iter().filter(|o| **o >= cfg.max_overlap).count();
        println!(
            "{account}: {} held-out tweets, median overlap {:.2}, 90th percentile {:.2}, {copies} judged copies",
            held.len(),
            overlaps[overlaps.len() / 2],
            overlaps[overlaps.len() * 9 / 10]
        );
        // Accounts repeat themselves: a held-out tweet is often a reworded one the account
        // posted before (neiltyson's "JUST POSTED: @StarTalkRadio's ..."), and rightly judged
        // a copy. Most are new: under 10% judged copies.
        assert!(
            copies * 10 < held.len(),
            "{account}: {copies} of {} held-out tweets judged copies",
            held.len()
        );
    }
}

#[test]
fn eval_on_a_corpus_compares_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let (home, base) = setup(tmp.path());
    let general = tmp.path().join("general.txt");
    let (table, _) = ok(aviary(
        &home,
        &[
            "eval",
            "--corpus",
            general.to_str().unwrap(),
            "--checkpoint",
            &base,
        ],
    ));
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 3, "header, built-in, base:\n{table}");
    // The small base was trained on this corpus; the built-in one on real tweets.
    assert!(
        eval_loss(&table, "base") < eval_loss(&table, "built-in") - 0.5,
        "{table}"
    );
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(&base).join("card.json")).unwrap())
            .unwrap();
    let best = card["training"]["progress"]["best_val_loss"]
        .as_f64()
        .unwrap();
    assert!(
        (eval_loss(&table, "base") - best).abs() < 0.15,
        "{table} vs {best}"
    );
}

/// The `score` column of `generate --bot` lines (id, score, novelty, text).
fn scores_and_texts(out: &str) -> Vec<(f64, String)> {
    out.lines()
        .take_while(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.splitn(4, '\t').collect();
            (f[1].parse().unwrap(), f[3].to_string())
        })
        .collect()
}

#[test]
fn generation_keeps_the_best_of_a_pool_ranked_the_same_for_a_seed() {
    let tmp = tempfile::tempdir().unwrap();
    let (home, base) = setup(tmp.path());
    ok(aviary(
        &home,
        &["finetune", "bakery", "--from", &base, "--lr", "0.005"],
    ));
    // A copy of the home before generating: the same seed there must give the same list.
    let twin = tmp.path().join("twin");
    std::fs::create_dir_all(&twin).unwrap();
    std::fs::copy(home.join("aviary.db"), twin.join("aviary.db")).unwrap();
    let args = [
        "generate", "--bot", "bakery", "-n", "4", "--seed", "11", "--report",
    ];
    let (out, err) = ok(aviary(&home, &args));
    assert!(
        err.contains("sampled 40"),
        "a pool of ten per candidate: {err}"
    );
    let kept = scores_and_texts(&out);
    assert_eq!(kept.len(), 4, "{out}\n{err}");
    assert!(
        kept.windows(2).all(|w| w[0].0 >= w[1].0),
        "best first: {kept:?}"
    );
    // The report: the account's lengths, the pool and the kept ones.
    for row in ["account", "sampled", "kept"] {
        assert!(
            out.lines().any(|l| l.starts_with(row)),
            "no {row} row:\n{out}"
        );
    }
    let sampled_row: Vec<&str> = out
        .lines()
        .find(|l| l.starts_with("sampled"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(sampled_row[1], "40", "{out}");
    // The bakery's tweets are made of known words, and so, after fine-tuning, is most of
    // what the bot says.
    let known: f64 = sampled_row[6].trim_end_matches('%').parse().unwrap();
    assert!(known > 50.0, "{out}");
    // The twin home: the same seed ranks the same pool the same way.
    let (again, _) = ok(aviary(&twin, &args));
    assert_eq!(scores_and_texts(&again), kept);
    // `aviary candidates` lists best first, with the score stored.
    let (list, _) = ok(aviary(&home, &["candidates", "bakery"]));
    let listed: Vec<String> = list
        .lines()
        .map(|l| l.splitn(5, '\t').nth(4).unwrap().to_string())
        .collect();
    let texts: Vec<String> = kept.iter().map(|k| k.1.clone()).collect();
    assert_eq!(listed, texts);
}

#[test]
fn no_candidate_the_length_cap_cut_off_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let (home, base) = setup(tmp.path());
    ok(aviary(
        &home,
        &["finetune", "bakery", "--from", &base, "--lr", "0.005"],
    ));
    // The bakery's tweets run to about 50 characters: a cap of 30 cuts off nearly all.
    let config = tmp.path().join("cap.toml");
    std::fs::write(&config, "[generate]\nmax_chars = 30\n").unwrap();
    let (out, err) = ok(aviary(
        &home,
        &[
            "--config",
            config.to_str().unwrap(),
            "generate",
            "--bot",
            "bakery",
            "-n",
            "3",
            "--seed",
            "2",
        ],
    ));
    assert!(err.contains("unfinished"), "{err}");
    let store = Store::open(&home.join("aviary.db")).unwrap();
    let bot = store.bot("bakery").unwrap().unwrap();
    for c in store.candidates(bot.id).unwrap() {
        assert!(
            c.text.chars().count() < 30,
            "{:?} ran into the cap and was kept:\n{out}",
            c.text
        );
        assert!(c.score.is_some());
    }
}

#[test]
fn a_bot_with_too_few_tweets_gets_a_hint_that_works() {
    let tmp = tempfile::tempdir().unwrap();
    let (home, base) = setup(tmp.path());
    let few = tmp.path().join("few.txt");
    std::fs::write(&few, account_tweets(400)[..50].join("\n")).unwrap();
    ok(aviary(&home, &["bot", "new", "small"]));
    ok(aviary(&home, &["import", "small", few.to_str().unwrap()]));
    let o = aviary(&home, &["finetune", "small", "--from", &base]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    let hint = err
        .lines()
        .find(|l| l.starts_with("HINT:"))
        .unwrap_or_else(|| panic!("no hint:\n{err}"));
    // "HINT: add tweets, or pass --batch-size N (or less)": do as it says.
    let n = hint
        .split("--batch-size ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("{hint}"));
    let (out, _) = ok(aviary(
        &home,
        &[
            "finetune",
            "small",
            "--from",
            &base,
            "--batch-size",
            n,
            "--max-steps",
            "2",
        ],
    ));
    assert!(out.contains("finished at step 2"), "{out}");
}

/// Ctrl-C during a fine-tune stops it after the current step with its state saved; `--restore`
/// continues from that step, and the run is recorded as stopped.
#[test]
fn ctrl_c_during_a_finetune_saves_a_resumable_state() {
    let tmp = tempfile::tempdir().unwrap();
    let (home, base) = setup(tmp.path());
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_aviary"))
        .args([
            "finetune",
            "bakery",
            "--from",
            &base,
            "--epochs",
            "100000",
            "--patience",
            "0",
        ])
        .env("AVIARY_HOME", &home)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("(Cancelled)") && out.contains("--restore"),
        "{out}\n{err}"
    );
    let step: u64 = out
        .split("finished at step ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(step > 0, "{out}");
    let (show, _) = ok(aviary(&home, &["bot", "show", "bakery"]));
    assert!(show.contains("finetune stopped"), "{show}");
    let stop = (step + 3).to_string();
    let (out, err) = ok(aviary(
        &home,
        &["finetune", "bakery", "--restore", "--max-steps", &stop],
    ));
    assert!(err.contains(&format!("resuming at step {step}")), "{err}");
    assert!(out.contains(&format!("finished at step {stop}")), "{out}");
}
