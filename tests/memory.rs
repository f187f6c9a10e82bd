//! Training streams its corpus: peak memory does not grow with the corpus size.

mod common;

use std::io::Write;
use std::process::Command;

#[test]
fn a_large_corpus_trains_in_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("big.txt");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let tweets = common::tweets(5000).join("\n") + "\n";
    let mut written = 0usize;
    let target = 256 << 20;
    let mut k = 0u64;
    while written < target {
        // Vary the text so tweets are not all duplicates of one another.
        let chunk = tweets.replace("today", &format!("day {k}"));
        f.write_all(chunk.as_bytes()).unwrap();
        written += chunk.len();
        k += 1;
    }
    drop(f);
    let dir = tmp.path().join("ck");
    let out = Command::new(env!("CARGO_BIN_EXE_aviary"))
        .args([
            "train",
            "--corpus",
            path.to_str().unwrap(),
            "--checkpoint-dir",
            dir.to_str().unwrap(),
        ])
        .args(common::TINY)
        .args(["--max-steps", "5"])
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let peak = common::children_peak_rss_mib();
    println!(
        "peak RSS training on a {} MiB corpus: {peak:.0} MiB",
        written >> 20
    );
    assert!(
        peak < 128.0,
        "peak RSS {peak:.0} MiB for a {} MiB corpus",
        written >> 20
    );
}
