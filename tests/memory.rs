//! Training streams its corpus: peak memory does not grow with the corpus size.

mod common;

use std::io::Write;

/// Writes a corpus of about `mib` MiB of varied tweets.
fn corpus(dir: &std::path::Path, mib: usize) -> (std::path::PathBuf, usize) {
    let path = dir.join(format!("corpus-{mib}.txt"));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let tweets = common::tweets(5000).join("\n") + "\n";
    let mut written = 0usize;
    let mut k = 0u64;
    while written < mib << 20 {
        // Vary the text so tweets are not all duplicates of one another.
        let chunk = tweets.replace("today", &format!("day {k}"));
        f.write_all(chunk.as_bytes()).unwrap();
        written += chunk.len();
        k += 1;
    }
    (path, written)
}

/// Trains a tiny model for a few steps on `path` in a child process; returns the largest
/// peak resident size of any child so far, in MiB (getrusage: this test is alone in its
/// binary, so the children are its own).
fn train_peak(path: &std::path::Path, dir: &std::path::Path) -> f64 {
    let ck = dir.join(format!(
        "ck-{}",
        path.file_name().unwrap().to_string_lossy()
    ));
    let out = common::train_tiny(path, &ck)
        .args(["--max-steps", "5"])
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::children_peak_rss_mib()
}

#[test]
fn a_large_corpus_trains_in_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let (small, small_len) = corpus(tmp.path(), 32);
    let (big, big_len) = corpus(tmp.path(), 256);
    // The small corpus first: the second figure is the larger of the two runs' peaks, so it
    // exceeds the first only if the big corpus took more memory.
    let p_small = train_peak(&small, tmp.path());
    let p_big = train_peak(&big, tmp.path());
    println!(
        "peak RSS training on {} MiB: {p_small:.0} MiB; on {} MiB: {p_big:.0} MiB at most",
        small_len >> 20,
        big_len >> 20
    );
    assert!(
        p_big < 128.0,
        "peak RSS {p_big:.0} MiB for a {} MiB corpus",
        big_len >> 20
    );
    // Eight times the corpus, the same memory (give or take allocator noise).
    assert!(
        p_big < p_small + 16.0,
        "memory grows with the corpus: {p_small:.0} MiB at {} MiB, {p_big:.0} MiB at {} MiB",
        small_len >> 20,
        big_len >> 20
    );
}
