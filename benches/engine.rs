//! `cargo bench`: aviary's training and sampling speed for the reference config, side by side
//! with PyTorch's reference script when a Python with torch is named, in one run.
//!
//!     AVIARY_BENCH_CORPUS=FILE TORCH_PYTHON=/tmp/torchenv/bin/python cargo bench
//!
//! The corpus defaults to the shipped sample; the reference script is
//! `../shared/bench/torch_charlstm.py` (skipped, with a reason, when absent). Threads follow
//! RAYON_NUM_THREADS (default 2, the reference machine's cores). `AVIARY_BENCH_FIRST_LAYER=1`
//! instead times the first layer's two CPU paths against each other, interleaved in one
//! process (the per-character table of `model::token_lstm` and what runs elsewhere:
//! embedding, dropout and the fused layer), forward and backward at the reference shapes.

use std::path::PathBuf;
use std::process::Command;

use aviary::app::bench::{run, BenchRequest};
use serde_json::Value;

fn main() {
    // The allocator settings of the binary, so the figures are the binary's.
    aviary::alloc::keep_freed_memory();
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "2".into());
    std::env::set_var("RAYON_NUM_THREADS", &threads);
    if std::env::var("AVIARY_BENCH_FIRST_LAYER").is_ok() {
        return first_layer_paths();
    }
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

/// The first layer's two CPU paths, forward and backward, alternated 40 times in one process
/// (the machine's drift then falls on both alike): medians and quartiles.
fn first_layer_paths() {
    use aviary::model::{fused_lstm, token_lstm, Dropout};
    use candle_core::{DType, Device, Tensor, Var};
    use std::time::Instant;
    let (t, b, v, e, h) = (32, 128, 527, 64, 512);
    let dev = Device::Cpu;
    let var = |shape: &[usize], scale: f64| {
        Var::from_tensor(
            &(Tensor::rand(-scale, scale, shape, &dev)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()),
        )
        .unwrap()
    };
    let (emb, w_in, w_hh) = (
        var(&[v, e], 1.0),
        var(&[4 * h, e + 1], 0.05),
        var(&[4 * h, h], 0.05),
    );
    let ids: Vec<u32> = (0..t * b)
        .map(|k| ((k * 7919 + k / 5) % v) as u32)
        .collect();
    let ids_t = Tensor::from_vec(ids.clone(), t * b, &dev).unwrap();
    let mut dropout = Dropout::new(0.05, 1);
    let mut times = [Vec::new(), Vec::new()];
    for k in 0..44 {
        let start = Instant::now();
        let out = if k % 2 == 0 {
            let input = token_lstm::Input {
                ids: ids.clone(),
                steps: t,
                batch: b,
                mask: dropout.next_mask(),
                precision: Default::default(),
            };
            token_lstm::first_layer(input, &emb, &w_in, &w_hh).unwrap()
        } else {
            let x = dropout
                .apply(&emb.index_select(&ids_t, 0).unwrap())
                .unwrap();
            let ones = Tensor::ones((t * b, 1), DType::F32, &dev).unwrap();
            let x = Tensor::cat(&[&x, &ones], 1)
                .unwrap()
                .reshape((t, b, e + 1))
                .unwrap();
            fused_lstm::lstm_sequence(&x, &w_in, &w_hh).unwrap()
        };
        out.sum_all().unwrap().backward().unwrap();
        if k >= 4 {
            times[k % 2].push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    for (ms, path) in times
        .iter_mut()
        .zip(["per-character table", "embedding, dropout, fused layer"])
    {
        ms.sort_by(f64::total_cmp);
        println!(
            "first layer, {path}: median {:.1} ms (quartiles {:.1} - {:.1}), forward and backward",
            ms[ms.len() / 2],
            ms[ms.len() / 4],
            ms[3 * ms.len() / 4]
        );
    }
}
