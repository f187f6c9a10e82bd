//! Fixtures shared by the integration tests: a small synthetic tweet corpus with enough
//! structure for a tiny model to learn within a few dozen steps.

#![allow(dead_code)]

pub mod mock_x;

use std::path::{Path, PathBuf};

use aviary::model::ModelConfig;
use aviary::train::{TrainConfig, TweetSource};

/// Says that the calling test skipped its checks, and why, as `SKIPPED <test>: <why>` among
/// `cargo test`'s own lines: written to the stream itself, past the test harness's capture
/// (which takes `print!`, not writes), so a skipped test is never just another "ok".
pub fn skipped(why: &str) {
    use std::io::Write;
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    writeln!(std::io::stderr(), "SKIPPED {test}: {why}").expect("stderr takes the line");
}

/// `n` tweets from a tiny grammar, deterministic.
pub fn tweets(n: usize) -> Vec<String> {
    let who = ["the cat", "my dog", "a bird", "our team", "the city"];
    let what = ["loves", "hates", "watches", "sings to", "waits for"];
    let whom = ["the sun", "rainy days", "coffee", "the game", "new shoes"];
    let tail = ["today!", "again...", "#mood", "so much", "https://t.co/x"];
    (0..n)
        .map(|i| {
            let k = i * 7 + i / 5;
            format!(
                "{} {} {} {} {}",
                who[k % 5],
                what[(k / 5) % 5],
                whom[(k / 3) % 5],
                tail[(k / 2) % 5],
                i % 97
            )
        })
        .collect()
}

/// Writes `tweets(n)` one per line to `dir/name` and returns the path.
pub fn corpus_file(dir: &Path, name: &str, n: usize) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, tweets(n).join("\n") + "\n").unwrap();
    p
}

/// A model small enough to train in a test.
pub fn tiny_model() -> ModelConfig {
    ModelConfig {
        embedding_size: 8,
        rnn_size: 32,
        num_layers: 1,
        drop_rate: 0.05,
    }
}

/// Training settings for a test: small batches, frequent validation.
pub fn tiny_train() -> TrainConfig {
    TrainConfig {
        batch_size: 8,
        seq_len: 16,
        learning_rate: 3e-3,
        val_every: 7,
        val_batches: 4,
        shuffle_windows: 64,
        min_char_count: 1,
        ..TrainConfig::default()
    }
}

/// Tweets held in memory, as a training source.
pub struct Lines(pub Vec<String>);

impl TweetSource for Lines {
    fn tweets(&self) -> aviary::Result<Box<dyn Iterator<Item = aviary::Result<String>> + '_>> {
        Ok(Box::new(self.0.iter().map(|s| Ok(s.clone()))))
    }

    fn describe(&self) -> String {
        "test tweets".into()
    }
}

/// Peak resident memory of all waited-for children so far, in MiB.
pub fn children_peak_rss_mib() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    assert_eq!(rc, 0, "getrusage failed");
    usage.ru_maxrss as f64 / 1024.0 // kilobytes on Linux
}

/// Runs the aviary binary with `home` as its home (no terminal on stdin).
pub fn aviary_at(home: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_aviary"))
        .args(args)
        .env("AVIARY_HOME", home)
        .env("RAYON_NUM_THREADS", "2")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("aviary runs")
}

/// Stdout and stderr of a run that must have succeeded.
pub fn ok(o: std::process::Output) -> (String, String) {
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "failed:\n{out}\n{err}");
    (out, err)
}

/// `aviary train` of a tiny model ([`TINY`]) on `corpus` into `dir`; the caller adds flags.
pub fn train_tiny(corpus: &Path, dir: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_aviary"));
    c.arg("train")
        .arg("--corpus")
        .arg(corpus)
        .arg("--checkpoint-dir")
        .arg(dir)
        .args(TINY);
    c
}

/// Model and batch flags of a tiny model that trains in seconds.
pub const TINY: [&str; 8] = [
    "--rnn-size",
    "32",
    "--embedding-size",
    "8",
    "--batch-size",
    "16",
    "--seq-len",
    "16",
];

/// `n` deterministic values spread evenly over [-scale, scale) (xorshift from `seed`), for
/// numeric tests that need inputs with no structure.
pub fn noise(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
        })
        .collect()
}
