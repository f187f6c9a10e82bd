//! Getting an account's tweets in, as a user would: fixtures in each real format (an X archive
//! as folder, zip and multi-part tweets.js; API v1.1 and v2 JSON; CSV; text) imported into
//! bots, the cleaning report checked, re-imports adding nothing, bad input refused with the
//! file and place named and the database left as it was.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use aviary::app::bots::{self, ImportRequest};
use aviary::app::Config;
use aviary::corpus::{DropReason, Format, ImportReport};
use aviary::store::Store;
use serde_json::{json, Value};

fn archive_tweet(id: u64, text: &str, reply_to: Option<&str>) -> Value {
    json!({"tweet": {
        "edit_info": {"initial": {"editTweetIds": [id.to_string()], "editsRemaining": "5"}},
        "retweeted": false,
        "entities": {"hashtags": [], "user_mentions": [], "urls": []},
        "id_str": id.to_string(),
        "id": id.to_string(),
        "in_reply_to_status_id_str": reply_to,
        "created_at": format!("Sat Feb {:02} 12:33:11 +0000 2023", 10 + id),
        "favorite_count": "0",
        "full_text": text,
        "lang": "en"
    }})
}

/// The tweets of the fixture archive, as parts: what each becomes is in the tests.
fn fixture_parts() -> Vec<Vec<Value>> {
    vec![
        vec![
            archive_tweet(1, "Good morning &amp; welcome https://t.co/abc", None),
            archive_tweet(2, "RT @other: their words, not mine", None),
            archive_tweet(3, "@friend thanks a lot!", Some("99")),
            archive_tweet(4, "ok", None),
        ],
        vec![
            archive_tweet(5, "Good morning & welcome", None),
            archive_tweet(6, "Another day,\nanother tweet", None),
        ],
    ]
}

const KEPT: [&str; 3] = [
    "Good morning & welcome",
    "thanks a lot!",
    "Another day, another tweet",
];

/// Writes an unpacked archive (`data/tweets.js`, `data/tweets-part1.js`, `data/account.js`).
fn write_archive(root: &Path) -> PathBuf {
    let data = root.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for (k, part) in fixture_parts().iter().enumerate() {
        let name = if k == 0 {
            "tweets.js".to_string()
        } else {
            format!("tweets-part{k}.js")
        };
        let body = format!(
            "window.YTD.tweets.part{k} = {}",
            serde_json::to_string_pretty(part).unwrap()
        );
        std::fs::write(data.join(name), body).unwrap();
    }
    std::fs::write(
        data.join("account.js"),
        r#"window.YTD.account.part0 = [ { "account" : { "username" : "fixture_acct", "accountId" : "42" } } ]"#,
    )
    .unwrap();
    std::fs::write(data.join("manifest.js"), "window.__THAR_CONFIG = {}").unwrap();
    root.to_path_buf()
}

/// Zips `root`'s files under a top folder, as X's download does.
fn write_zip(root: &Path, zip_path: &Path, skip: &[&str]) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(zip_path).unwrap());
    let opts = zip::write::SimpleFileOptions::default();
    for entry in std::fs::read_dir(root.join("data")).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        if skip.contains(&name.as_str()) {
            continue;
        }
        zip.start_file(format!("twitter-2023-02-20/data/{name}"), opts)
            .unwrap();
        zip.write_all(&std::fs::read(&p).unwrap()).unwrap();
    }
    zip.finish().unwrap();
}

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    store: Store,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let store = Store::open(&dir.join("home").join("aviary.db")).unwrap();
        Fixture {
            _tmp: tmp,
            dir,
            store,
        }
    }

    fn bot(&mut self, name: &str) {
        bots::new_bot(&mut self.store, &Config::default(), name, None).unwrap();
    }

    fn import(
        &mut self,
        bot: &str,
        paths: &[&Path],
        format: Option<Format>,
    ) -> aviary::Result<ImportReport> {
        bots::import(
            &mut self.store,
            &ImportRequest {
                bot: bot.into(),
                paths: paths.iter().map(|p| p.to_path_buf()).collect(),
                format,
            },
        )
    }

    fn kept(&self, bot: &str) -> Vec<String> {
        let b = self.store.bot(bot).unwrap().unwrap();
        self.store
            .kept_tweets(b.id, 0, 1000)
            .unwrap()
            .into_iter()
            .map(|(_, t)| t)
            .collect()
    }

    /// Everything a failed import must leave as it was: tweets and imports of every bot.
    fn state(&self) -> Vec<(String, u64, usize)> {
        self.store
            .bots()
            .unwrap()
            .into_iter()
            .map(|b| {
                let c = self.store.tweet_counts(b.id).unwrap();
                (
                    b.name.clone(),
                    c.total,
                    self.store.imports(b.id).unwrap().len(),
                )
            })
            .collect()
    }

    fn write(&self, name: &str, body: &[u8]) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }
}

fn assert_fixture_report(r: &ImportReport) {
    assert_eq!(r.read, 6, "{r:?}");
    assert_eq!(r.kept, 3, "{r:?}");
    let dropped: Vec<(DropReason, u64)> = r.dropped.iter().map(|(k, v)| (*k, *v)).collect();
    assert_eq!(
        dropped,
        [
            (DropReason::Retweet, 1),
            (DropReason::TooShort, 1),
            (DropReason::Duplicate, 1)
        ]
    );
    assert_eq!(r.handle.as_deref(), Some("fixture_acct"));
    assert_eq!(r.first.unwrap().to_rfc3339(), "2023-02-11T12:33:11+00:00");
    assert_eq!(r.last.unwrap().to_rfc3339(), "2023-02-16T12:33:11+00:00");
    assert_eq!(
        r.kept_chars,
        KEPT.iter().map(|t| t.chars().count() as u64).sum::<u64>()
    );
}

#[test]
fn archive_as_folder_zip_and_tweets_js_import_alike() {
    let mut f = Fixture::new();
    let root = write_archive(&f.dir.join("archive"));
    let zip = f.dir.join("archive.zip");
    write_zip(&root, &zip, &[]);

    for (bot, path) in [
        ("folder", root.clone()),
        ("zip", zip.clone()),
        ("tweetsjs", root.join("data").join("tweets.js")),
    ] {
        f.bot(bot);
        let r = f.import(bot, &[&path], None).unwrap();
        assert_fixture_report(&r);
        assert_eq!(r.formats, ["archive"]);
        assert_eq!(r.files.len(), 2, "both parts read: {:?}", r.files);
        assert_eq!(f.kept(bot), KEPT, "{bot}");
        // The archive names the account: the bot takes its handle.
        assert_eq!(
            f.store.bot(bot).unwrap().unwrap().handle.as_deref(),
            Some("fixture_acct")
        );
    }
    // Older archives: tweet.js and window.YTD.tweet.part0.
    let old = f.dir.join("old");
    std::fs::create_dir_all(old.join("data")).unwrap();
    std::fs::write(
        old.join("data").join("tweet.js"),
        format!(
            "window.YTD.tweet.part0 = {}",
            serde_json::to_string(&fixture_parts()[1]).unwrap()
        ),
    )
    .unwrap();
    f.bot("old");
    let r = f.import("old", &[&old], None).unwrap();
    assert_eq!((r.read, r.kept), (2, 2));
}

#[test]
fn reimporting_the_same_tweets_adds_nothing() {
    let mut f = Fixture::new();
    let root = write_archive(&f.dir.join("archive"));
    f.bot("b");
    f.import("b", &[&root], None).unwrap();
    let zip = f.dir.join("a.zip");
    write_zip(&root, &zip, &[]);
    let again = f.import("b", &[&zip], None).unwrap();
    assert_eq!((again.read, again.already_imported, again.kept), (6, 6, 0));
    assert_eq!(f.kept("b"), KEPT);
    let counts = f
        .store
        .tweet_counts(f.store.bot("b").unwrap().unwrap().id)
        .unwrap();
    assert_eq!(counts.total, 6);

    // Plain text has no ids: the text is the identity.
    let txt = f.write(
        "t.txt",
        b"first line tweet\nsecond line tweet\nfirst line tweet\n",
    );
    f.bot("t");
    let r = f.import("t", &[&txt], None).unwrap();
    assert_eq!(
        (r.read, r.kept, r.dropped[&DropReason::Duplicate]),
        (3, 2, 1)
    );
    let r = f.import("t", &[&txt], None).unwrap();
    assert_eq!((r.kept, r.already_imported), (0, 2));
    assert_eq!(f.kept("t"), ["first line tweet", "second line tweet"]);
}

#[test]
fn api_json_csv_and_text_land_in_the_store() {
    let mut f = Fixture::new();
    let v1 = f.write(
        "timeline.json",
        json!([
            {"id_str": "1", "full_text": "v1 &quot;extended&quot; tweet", "created_at": "Sat Feb 18 12:33:11 +0000 2023"},
            {"id": 2, "text": "RT @x: theirs", "retweeted_status": {"id": 9}},
            {"id": 3, "text": "@a @b a reply here", "in_reply_to_status_id": 8}
        ])
        .to_string()
        .as_bytes(),
    );
    let page = |ids: [u32; 2]| {
        json!({"data": [
            {"id": ids[0].to_string(), "text": "short", "note_tweet": {"text": format!("a long v2 post number {}", ids[0])},
             "edit_history_tweet_ids": [ids[0].to_string()], "created_at": "2023-02-18T12:33:11.000Z"},
            {"id": ids[1].to_string(), "text": "RT @y: z", "referenced_tweets": [{"type": "retweeted", "id": "1"}]}
        ], "includes": {"tweets": [{"id": "1", "text": "not this account's"}]}, "meta": {"result_count": 2}})
        .to_string()
    };
    let v2 = f.write(
        "pages.jsonl",
        format!("{}\n{}\n", page([10, 11]), page([12, 13])).as_bytes(),
    );
    let csv = f.write(
        "tweets.csv",
        b"id,created_at,text,is_retweet\n1,2019-01-01 10:00:00,\"csv, with a comma\",false\n2,,RT @q: no,true\n",
    );
    let txt = f.write("tweets.txt", "line one here\n\nline two here\n".as_bytes());

    let cases: [(&Path, &[&str], &str); 4] = [
        (&v1, &["v1 \"extended\" tweet", "a reply here"], "api-v1"),
        (
            &v2,
            &["a long v2 post number 10", "a long v2 post number 12"],
            "api-v2",
        ),
        (&csv, &["csv, with a comma"], "csv"),
        (&txt, &["line one here", "line two here"], "text"),
    ];
    for (i, (path, kept, format)) in cases.iter().enumerate() {
        let bot = format!("b{i}");
        f.bot(&bot);
        let r = f.import(&bot, &[path], None).unwrap();
        assert_eq!(f.kept(&bot), *kept, "{format}");
        assert_eq!(r.formats, [*format]);
        // Forcing the detected format reads the same.
        let forced = format.parse::<Format>().unwrap();
        f.bot(&format!("{bot}f"));
        f.import(&format!("{bot}f"), &[path], Some(forced)).unwrap();
        assert_eq!(f.kept(&format!("{bot}f")), *kept, "forced {format}");
    }
}

#[test]
fn a_policy_change_recleans_the_stored_tweets() {
    let mut f = Fixture::new();
    let root = write_archive(&f.dir.join("archive"));
    f.bot("p");
    f.import("p", &[&root], None).unwrap();
    let policy = bots::policy_of(&f.store.bot("p").unwrap().unwrap()).unwrap();
    let strict = bots::apply_settings(
        &policy,
        &[
            "drop_replies=true".into(),
            "urls=placeholder".into(),
            "min_chars=0".into(),
        ],
    )
    .unwrap();
    let r = bots::set_policy(&mut f.store, "p", &strict).unwrap();
    assert_eq!(r.dropped.get(&DropReason::Reply), Some(&1));
    assert_eq!(
        f.kept("p"),
        [
            "Good morning & welcome <url>",
            "ok",
            "Good morning & welcome",
            "Another day, another tweet"
        ]
    );
    // And back: the same tweets, cleaned as first imported.
    bots::set_policy(&mut f.store, "p", &policy).unwrap();
    assert_eq!(f.kept("p"), KEPT);
    let e = bots::apply_settings(&policy, &["drop_repiles=true".into()])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("drop_repiles") && e.contains("drop_replies"),
        "{e}"
    );
}

#[test]
fn bad_input_is_refused_naming_the_file_and_the_store_is_unchanged() {
    let mut f = Fixture::new();
    let root = write_archive(&f.dir.join("archive"));
    f.bot("b");
    f.import("b", &[&root], None).unwrap();
    let good = f.write("good.txt", b"a perfectly good tweet\n");

    let tweets_js = std::fs::read_to_string(root.join("data").join("tweets.js")).unwrap();
    let truncated = f.dir.join("trunc");
    std::fs::create_dir_all(truncated.join("data")).unwrap();
    std::fs::write(
        truncated.join("data").join("tweets.js"),
        &tweets_js[..tweets_js.len() / 2],
    )
    .unwrap();
    let no_tweets_zip = f.dir.join("no-tweets.zip");
    write_zip(&root, &no_tweets_zip, &["tweets.js", "tweets-part1.js"]);
    let not_js = f.write("tweets.js", b"var x = 1;\n");

    let cases: Vec<(PathBuf, Option<Format>, Vec<&str>)> = vec![
        (
            truncated.clone(),
            None,
            vec!["tweets.js", "line", "not valid JSON"],
        ),
        (
            not_js,
            Some(Format::Archive),
            vec!["tweets.js", "line 1", "window.YTD.tweets.part0"],
        ),
        (
            f.write("nocol.csv", b"id,user,likes\n1,a,2\n"),
            None,
            vec!["nocol.csv", "no text column", "id, user, likes"],
        ),
        (
            f.write("latin1.txt", b"fine tweet\nna\xefve caf\xe9\n"),
            None,
            vec!["latin1.txt", "line 2", "UTF-8"],
        ),
        (
            f.write("latin1.json", b"[{\"text\": \"caf\xe9\"}]"),
            None,
            vec!["latin1.json", "line 1", "not valid JSON"],
        ),
        (
            // A program or image: called what it is, not advised to convert from Latin-1.
            f.write("ls", b"\x7fELF\x02\x01\x01\x00\x00\x00\xc3\x28 text\n"),
            None,
            vec!["ls", "not a text file", "one tweet a line"],
        ),
        (
            f.write("ls.txt", b"\x7fELF\x02\x01\x01\x00\x00\x00\xc3\x28 text\n"),
            Some(Format::Text),
            vec!["ls.txt", "not a text file"],
        ),
        (
            f.write("utf16.txt", b"\xff\xfeh\x00i\x00\n\x00"),
            None,
            vec!["utf16.txt", "UTF-16", "iconv -f UTF-16 -t UTF-8"],
        ),
        (f.write("empty.txt", b""), None, vec!["empty.txt", "empty"]),
        (
            f.write("blank.json", b"  \n\n"),
            Some(Format::ApiV1),
            vec!["blank.json", "no tweets"],
        ),
        (
            no_tweets_zip,
            None,
            vec!["no-tweets.zip", "without data/tweets.js", "account.js"],
        ),
        (
            f.write("fake.zip", b"PK\x03\x04 not really a zip"),
            None,
            vec!["fake.zip", "not a readable zip"],
        ),
        (
            f.dir.join("missing.json"),
            None,
            vec!["missing.json", "No such file"],
        ),
        (
            f.write("notjson.json", b"{\"user\": \"x\"}"),
            None,
            vec!["notjson.json", "no tweet text"],
        ),
    ];
    let before = f.state();
    for (path, format, needles) in cases {
        // The good file first: its tweets must not stay when the bad one fails. (A forced
        // format applies to every file, so those cases import the bad file alone.)
        let paths: Vec<&Path> = match format {
            None => vec![&good, &path],
            Some(_) => vec![&path],
        };
        let e = f
            .import("b", &paths, format)
            .expect_err(&format!("{} was accepted", path.display()))
            .to_string();
        for n in needles {
            assert!(e.contains(n), "`{n}` missing from: {e}");
        }
        assert_eq!(f.state(), before, "{} changed the store", path.display());
    }
    let e = f.import("nobody", &[&good], None).unwrap_err().to_string();
    assert!(
        e.contains("no bot named `nobody`") && e.contains("aviary bot new nobody"),
        "{e}"
    );
}

use common::aviary_at as aviary;

/// Stdout of a run that must have succeeded.
fn ok(o: std::process::Output) -> String {
    common::ok(o).0
}

#[test]
fn cli_bots_import_train_and_remove() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let root = write_archive(&tmp.path().join("archive"));
    let root_s = root.to_str().unwrap();

    let out = ok(aviary(
        &home,
        &["bot", "new", "fixture", "--handle", "@someone"],
    ));
    assert!(out.contains("created bot fixture (@someone)"), "{out}");
    let o = aviary(&home, &["bot", "new", "fixture"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
    let o = aviary(&home, &["bot", "new", "no/slash"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a usable bot name"));

    let out = ok(aviary(&home, &["import", "fixture", root_s]));
    assert!(out.contains("(X archive)"), "{out}");
    assert!(out.contains("read             6"), "{out}");
    assert!(out.contains("kept             3"), "{out}");
    assert!(out.contains("retweet 1, too-short 1, duplicate 1"), "{out}");
    assert!(out.contains("2023-02-11 to 2023-02-16"), "{out}");
    let out = ok(aviary(&home, &["import", "fixture", root_s]));
    assert!(
        out.contains("skipped          6  already imported"),
        "{out}"
    );

    let out = ok(aviary(&home, &["bot", "list"]));
    let row = out
        .lines()
        .find(|l| l.starts_with("fixture"))
        .expect("listed");
    assert!(
        row.contains("@someone") && row.contains(" 3 ") && row.ends_with("base"),
        "{row}"
    );

    // Training on the bot: a run is recorded and the bot gets its model.
    let mut tweets = Vec::new();
    for i in 0..300 {
        tweets.push(format!(
            "tweet number {i} about the weather and {}",
            i * 7 % 13
        ));
    }
    let txt = tmp.path().join("more.txt");
    std::fs::write(&txt, tweets.join("\n")).unwrap();
    ok(aviary(&home, &["import", "fixture", txt.to_str().unwrap()]));
    let train = [
        "train",
        "--bot",
        "fixture",
        "--max-steps",
        "6",
        "--val-every",
        "3",
        "--rnn-size",
        "16",
        "--embedding-size",
        "8",
        "--batch-size",
        "8",
        "--seq-len",
        "16",
    ];
    let out = ok(aviary(&home, &train));
    assert!(
        out.contains(home.join("bots/fixture/model").to_str().unwrap()),
        "{out}"
    );
    let out = ok(aviary(&home, &["bot", "show", "fixture"]));
    assert!(out.contains("train stopped, 6 steps"), "{out}");
    assert!(
        out.contains("model: ") && out.contains("bots/fixture/model"),
        "{out}"
    );
    assert!(out.contains("303 kept"), "{out}");
    let out = ok(aviary(&home, &["bot", "list"]));
    assert!(
        out.lines()
            .any(|l| l.starts_with("fixture") && l.ends_with("trained")),
        "{out}"
    );
    let store = Store::open(&home.join("aviary.db")).unwrap();
    let runs = store
        .runs(store.bot("fixture").unwrap().unwrap().id)
        .unwrap();
    let losses: Vec<(u64, f64, f64)> =
        serde_json::from_str(runs[0].losses.as_deref().unwrap()).unwrap();
    assert_eq!(
        losses.iter().map(|l| l.0).collect::<Vec<_>>(),
        [3, 6],
        "validations at 3 and 6"
    );
    assert_eq!(
        runs[0].best_val_loss,
        Some(losses.iter().map(|l| l.2).fold(f64::MAX, f64::min))
    );
    drop(store);

    // Removal asks; without a terminal it refuses rather than guess.
    let o = aviary(&home, &["bot", "remove", "fixture"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--yes"));
    ok(aviary(&home, &["bot", "remove", "fixture", "--yes"]));
    assert!(!home.join("bots/fixture").exists());
    let out = ok(aviary(&home, &["bot", "list"]));
    assert!(out.contains("no bots yet"), "{out}");
    let o = aviary(&home, &["train", "--bot", "fixture"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("no bot named `fixture`"));
}

/// Real archives and collections in `../shared/data`, where present: the counts each import
/// prints are the collection's size, and every tweet is kept or dropped for a reason.
#[test]
fn real_collections_import() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    if !shared.is_dir() {
        common::skipped(&format!("{} is absent", shared.display()));
        return;
    }
    let cases: [(&str, u64); 11] = [
        ("xarchive-andreruffert", 1986),
        ("xarchive-mkommar", 2001),
        ("xarchive-alrocar", 820),
        ("xarchive-alystyle_", 1627),
        ("xarchive-milahu104", 2045),
        ("xarchive-vovavasilina", 2161),
        ("xarchive2020-dsajgiouawj", 1163),
        ("grailbird-JAForbes", 2994),
        ("grailbird-JAForbes/tweets.csv", 2994),
        ("account-trump-tta-2019/realDonaldTrump_tweets.json", 3199),
        ("accounts-textonly-2017/BarackObama_tweets.json", 3200),
    ];
    let mut f = Fixture::new();
    for (i, (rel, read)) in cases.iter().enumerate() {
        let bot = format!("real{i}");
        f.bot(&bot);
        let r = f.import(&bot, &[&shared.join(rel)], None).unwrap();
        println!(
            "{rel}: read {}, kept {}, dropped {:?}",
            r.read, r.kept, r.dropped
        );
        assert_eq!(r.read, *read, "{rel}");
        assert_eq!(r.kept + r.dropped_total(), r.read, "{rel}");
        assert!(r.kept > r.read / 3, "{rel}: too few kept: {r:?}");
    }
    // The old archive's JS files and its CSV describe the same tweets.
    let (js, csv) = (f.kept("real7"), f.kept("real8"));
    assert_eq!(js.len(), csv.len());
    // The v2 samples: pages as JSON lines.
    let v2 = shared.join("apiv2-twarc2-samples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&v2)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    f.bot("v2");
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let r = f.import("v2", &refs, None).unwrap();
    println!("v2 samples: {r:?}");
    assert_eq!(r.formats, ["api-v2"]);
    assert!(r.read > 500, "{r:?}");
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    // More output than a pipe buffer holds (64 KiB on Linux): a tiny model's
    // 3,000 candidates.
    let tmp = tempfile::tempdir().unwrap();
    let corpus = common::corpus_file(tmp.path(), "tweets.txt", 300);
    let ck = tmp.path().join("ck");
    let o = common::train_tiny(&corpus, &ck)
        .args(["--max-steps", "3"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let generate = || {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_aviary"));
        c.args([
            "generate",
            "--checkpoint",
            ck.to_str().unwrap(),
            "-n",
            "3000",
            "--seed",
            "1",
        ]);
        c
    };
    let all = generate().output().unwrap();
    assert!(all.stdout.len() > 65536, "only {} bytes", all.stdout.len());
    let mut child = generate()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away, as `head` does
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "{stderr}"
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}: {stderr}",
        out.status
    );
}

/// The pre-2019 archive (Grailbird: `data/js/tweets/YYYY_MM.js`) and trumptwitterarchive's JSON
/// array, from small fixtures written in their shapes (tests/fixtures), without ../shared.
#[test]
fn grailbird_and_trumptwitterarchive_fixtures_import() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut f = Fixture::new();
    f.bot("grail");
    let r = f
        .import("grail", &[&fixtures.join("grailbird")], None)
        .unwrap();
    assert_eq!(r.formats, ["archive"], "{r:?}");
    assert_eq!((r.read, r.kept), (4, 3), "{r:?}");
    assert_eq!(r.dropped.values().sum::<u64>(), 1, "the retweet: {r:?}");
    let kept = f.kept("grail");
    assert!(
        kept.contains(&"a reply, kept without its leading mention & decoded".to_string()),
        "{kept:?}"
    );
    assert!(
        kept.contains(&"May has a link in it".to_string()),
        "{kept:?}"
    );
    assert_eq!(
        (r.first.unwrap().to_rfc3339(), r.last.unwrap().to_rfc3339()),
        (
            "2015-04-01T12:00:00+00:00".to_string(),
            "2015-05-03T09:30:00+00:00".to_string()
        )
    );
    // Importing again adds nothing: the ids are known.
    let again = f
        .import("grail", &[&fixtures.join("grailbird")], None)
        .unwrap();
    assert_eq!((again.already_imported, again.kept), (4, 0), "{again:?}");

    f.bot("tta");
    let r = f
        .import(
            "tta",
            &[&fixtures.join("trumptwitterarchive/tweets.json")],
            None,
        )
        .unwrap();
    assert_eq!(r.formats, ["api-v1"], "{r:?}");
    assert_eq!((r.read, r.kept), (3, 2), "{r:?}");
    let kept = f.kept("tta");
    assert!(
        kept.contains(
            &"A hand-written tweet in the archive's own shape & its entities".to_string()
        ),
        "{kept:?}"
    );
    assert!(!kept.iter().any(|t| t.contains("retweet")), "{kept:?}");
    assert_eq!(r.first.unwrap().to_rfc3339(), "2019-10-12T18:30:00+00:00");
}
