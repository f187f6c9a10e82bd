//! `cargo bench`: aviary's training and sampling speed for the reference config, side by side
//! with PyTorch's reference script when a Python with torch is named, in one run.
//!
//!     AVIARY_BENCH_CORPUS=FILE TORCH_PYTHON=/tmp/torchenv/bin/python cargo bench
//!
//! The corpus defaults to the shipped sample; the reference script is
//! `../shared/bench/torch_charlstm.py` (skipped, with a reason, when absent). Threads follow
//! RAYON_NUM_THREADS (default 2, the reference machine's cores).

use std::path::PathBuf;
use std::process::Command;

use aviary::app::bench::{run, BenchRequest};
use serde_json::Value;

fn main() {
    // The allocator settings of the binary, so the figures are the binary's.
    aviary::alloc::keep_freed_memory();
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "2".into());
    std::env::set_var("RAYON_NUM_THREADS", &threads);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let corpus = std::env::var("AVIARY_BENCH_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("data/sample_tweets.txt"));
    let mut ours = Vec::new();
    run(&corpus, &BenchRequest::default(), |v| {
        println!("{v}");
        ours.push(v.clone());
    })
    .unwrap_or_else(|e| panic!("aviary bench failed: {e}"));

    let script = root.join("../shared/bench/torch_charlstm.py");
    let Ok(python) = std::env::var("TORCH_PYTHON") else {
        println!("reference skipped: set TORCH_PYTHON to a Python with torch to compare");
        return;
    };
    if !script.exists() {
        println!("reference skipped: {} is absent", script.display());
        return;
    }
    let out = Command::new(python)
        .arg(&script)
        .args(["--corpus", corpus.to_str().unwrap(), "--threads", &threads])
        .output()
        .expect("the reference script runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for t in &theirs {
        println!("{t}");
        let same = ours
            .iter()
            .find(|o| o["what"] == t["what"] && o.get("streams") == t.get("streams"));
        if let Some(o) = same {
            let ratio = o["chars_per_s"].as_f64().unwrap() / t["chars_per_s"].as_f64().unwrap();
            let streams = t
                .get("streams")
                .map(|s| format!(" ({s} streams)"))
                .unwrap_or_default();
            println!(
                "ratio aviary/torch {}{streams}: {ratio:.2}x",
                t["what"].as_str().unwrap()
            );
        }
    }
}
