//! The `aviary` binary as a user runs it: train shows a falling loss and writes a checkpoint,
//! generate prints tweet-shaped text, resume and interruption keep what was saved.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use aviary::model::Checkpoint;
use candle_core::Device;

fn aviary(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aviary"))
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .expect("aviary runs")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn small_train_args<'a>(corpus: &'a str, dir: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--corpus",
        corpus,
        "--checkpoint-dir",
        dir,
        "--rnn-size",
        "48",
        "--embedding-size",
        "16",
        "--batch-size",
        "16",
        "--seq-len",
        "24",
    ]
}

fn val_losses(stderr: &str) -> Vec<f64> {
    stderr
        .lines()
        .filter_map(|l| l.split("validation loss ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

#[test]
fn train_then_generate() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = common::corpus_file(tmp.path(), "tweets.txt", 600);
    let ck = tmp.path().join("ck");
    let (corpus, ck_s) = (corpus.to_str().unwrap(), ck.to_str().unwrap());

    let mut args = small_train_args(corpus, ck_s);
    args.extend([
        "--max-steps",
        "60",
        "--val-every",
        "20",
        "--learning-rate",
        "0.003",
    ]);
    let out = aviary(&args);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "train failed:\n{stderr}");
    let vals = val_losses(&stderr);
    assert!(
        vals.len() >= 3,
        "expected a validation every 20 steps:\n{stderr}"
    );
    assert!(
        vals.last().unwrap() < &(vals[0] - 0.3),
        "loss did not fall: {vals:?}"
    );
    assert!(stdout.contains("--restore"), "{stdout}");
    for f in ["model.safetensors", "card.json", "state.safetensors"] {
        assert!(ck.join(f).exists(), "{f} missing");
    }

    // Resume continues from step 60, with a new learning rate.
    let mut args = small_train_args(corpus, ck_s);
    args.extend(["--restore", "--max-steps", "80", "--learning-rate", "0.001"]);
    let out = aviary(&args);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "resume failed:\n{stderr}");
    assert!(stderr.contains("resuming at step 60"), "{stderr}");
    assert!(
        stderr.contains("--rnn-size is ignored with --restore"),
        "{stderr}"
    );
    assert!(stdout.contains("finished at step 80"), "{stdout}");
    let card: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ck.join("card.json")).unwrap()).unwrap();
    assert_eq!(card["training"]["config"]["learning_rate"], 0.001);

    // A fresh run must not overwrite it.
    let out = aviary(&small_train_args(corpus, ck_s));
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("already holds a checkpoint") && stderr.contains("--restore"),
        "{stderr}"
    );

    // Generation: n candidates, each a tweet, reproducible with a seed, primed when asked.
    let out = aviary(&["generate", "--checkpoint", ck_s, "-n", "5", "--seed", "7"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{stdout}");
    assert!(lines.iter().all(|l| l.chars().count() <= 280));
    assert!(
        lines.iter().filter(|l| !l.trim().is_empty()).count() >= 4,
        "{stdout}"
    );
    let again = aviary(&["generate", "--checkpoint", ck_s, "-n", "5", "--seed", "7"]);
    assert_eq!(text(&again).0, stdout, "same seed, different candidates");
    let out = aviary(&[
        "generate",
        "--checkpoint",
        ck_s,
        "-n",
        "3",
        "--prime",
        "the cat",
        "--top-k",
        "5",
    ]);
    let (stdout, _) = text(&out);
    assert!(
        stdout.lines().count() == 3 && stdout.lines().all(|l| l.starts_with("the cat")),
        "{stdout}"
    );
}

/// With no checkpoint named, the base model built into the binary answers.
#[test]
fn generate_runs_on_the_built_in_base_model() {
    let out = aviary(&["generate", "-n", "4", "--seed", "1"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(lines.iter().all(|l| l.chars().count() <= 280), "{stdout}");
    // A trained model writes words: most of what it prints is letters and spaces.
    let all: String = lines.concat();
    let wordy = all
        .chars()
        .filter(|c| c.is_alphabetic() || *c == ' ')
        .count();
    assert!(
        wordy * 10 >= all.chars().count() * 7,
        "not tweet-like: {stdout}"
    );
}

#[test]
fn bad_checkpoint_and_bad_corpus_get_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nothing-here");
    let out = aviary(&["generate", "--checkpoint", dir.to_str().unwrap()]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("nothing-here") && stderr.contains("HINT"),
        "{stderr}"
    );

    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "\n\n").unwrap();
    let ck = tmp.path().join("ck");
    let out = aviary(&small_train_args(
        empty.to_str().unwrap(),
        ck.to_str().unwrap(),
    ));
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("empty.txt") && stderr.contains("too small"),
        "{stderr}"
    );

    // A sampling setting out of range, on a checkpoint that loads: the message names it.
    let corpus = common::corpus_file(tmp.path(), "tweets.txt", 300);
    let good = tmp.path().join("good");
    let mut args = small_train_args(corpus.to_str().unwrap(), good.to_str().unwrap());
    args.extend(["--max-steps", "2"]);
    assert!(aviary(&args).status.success());
    let out = aviary(&[
        "generate",
        "--checkpoint",
        good.to_str().unwrap(),
        "--top-p",
        "2",
    ]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("top-p 2") && stderr.contains("HINT"),
        "{stderr}"
    );
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

fn spawn_training(corpus: &str, dir: &Path) -> std::process::Child {
    let mut args = small_train_args(corpus, dir.to_str().unwrap());
    args.extend([
        "--val-every",
        "1",
        "--num-epochs",
        "100000",
        "--patience",
        "0",
    ]);
    Command::new(env!("CARGO_BIN_EXE_aviary"))
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Killing the process at arbitrary moments while it saves after every step never leaves a
/// checkpoint that fails to load.
#[test]
fn kill_during_saves_leaves_a_loadable_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = common::corpus_file(tmp.path(), "tweets.txt", 300);
    let dir = tmp.path().join("ck");
    let mut loaded = 0;
    for (k, wait_ms) in [700u64, 910, 1130, 1370, 1590].into_iter().enumerate() {
        let child = spawn_training(corpus.to_str().unwrap(), &dir);
        std::thread::sleep(Duration::from_millis(wait_ms));
        signal(child.id(), "-KILL");
        let out = child.wait_with_output().unwrap();
        assert!(
            !out.status.success(),
            "killed at {wait_ms} ms but it had ended: {}",
            text(&out).1
        );
        if !dir.join("card.json").exists() {
            continue; // killed before the first save
        }
        Checkpoint::load(&dir, &Device::Cpu).unwrap_or_else(|e| panic!("after kill {k}: {e}"));
        loaded += 1;
        std::fs::remove_dir_all(&dir).unwrap();
    }
    // Kills that all land before the first save would test nothing.
    assert!(loaded >= 2, "only {loaded} of 5 kills came after a save");
}

/// Ctrl-C stops training after the current step, saves, and says how to continue.
#[test]
fn interrupt_saves_and_explains_how_to_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = common::corpus_file(tmp.path(), "tweets.txt", 300);
    let dir = tmp.path().join("ck");
    let child = spawn_training(corpus.to_str().unwrap(), &dir);
    std::thread::sleep(Duration::from_millis(1500));
    signal(child.id(), "-INT");
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("stopping after this step"), "{stderr}");
    assert!(
        stdout.contains("(Cancelled)") && stdout.contains("--restore"),
        "{stdout}\n{stderr}"
    );
    let ck = Checkpoint::load(&dir, &Device::Cpu).unwrap();
    assert!(ck.card.training.is_some());
}

/// `aviary bench` prints one JSON object per measurement: training speed, where a training
/// step's time goes, and sampling speed at 1 and 64 streams (on the CPU, which it says).
#[test]
fn bench_prints_each_measurement_as_a_json_line() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = common::corpus_file(tmp.path(), "corpus.txt", 400);
    let o = aviary(&[
        "bench",
        "--corpus",
        corpus.to_str().unwrap(),
        "--device",
        "cpu",
        "--steps",
        "2",
        "--gen-chars",
        "10",
        "--hidden",
        "32",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let whats: Vec<&str> = lines.iter().map(|l| l["what"].as_str().unwrap()).collect();
    assert_eq!(
        whats,
        ["train", "train-phases", "generate", "generate"],
        "{out}"
    );
    assert!(lines[0]["chars_per_s"].as_f64().unwrap() > 0.0);
    assert!(lines[0]["final_loss"].as_f64().unwrap().is_finite());
    for phase in ["forward_ms", "backward_ms", "update_ms"] {
        let ms = lines[1][phase]
            .as_f64()
            .unwrap_or_else(|| panic!("no {phase}: {out}"));
        assert!(ms > 0.0, "{phase} {ms}");
    }
    // Each line names the CPU and, on x86-64, the vector extensions it has.
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    for line in &lines {
        let device = line["device"].as_str().unwrap();
        if let Some(model) = cpuinfo.lines().find(|l| l.starts_with("model name")) {
            let model = model.split_once(':').unwrap().1.trim();
            assert!(device.contains(model), "{device} does not name {model}");
        }
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            assert!(device.contains("avx2"), "{device}");
        }
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            device.contains("avx512f"),
            std::is_x86_feature_detected!("avx512f"),
            "{device}"
        );
    }
    for (line, streams) in lines[2..].iter().zip([1, 64]) {
        assert_eq!(line["streams"], streams);
        assert!(line["chars_per_s"].as_f64().unwrap() > 0.0);
        assert!(
            line["device"].as_str().unwrap().starts_with("cpu"),
            "{line}"
        );
    }
}

/// `[train] bf16` is how this machine runs the products, not part of the run: a run trained
/// with it resumes with it off (and the other way round), and a CPU without AVX-512 BF16 says
/// how to turn it off, before anything is written.
#[test]
fn bf16_follows_the_config_of_now_on_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = common::corpus_file(tmp.path(), "tweets.txt", 300);
    let ck = tmp.path().join("ck");
    let (corpus, ck_s) = (corpus.to_str().unwrap(), ck.to_str().unwrap());
    let config = |bf16: bool| {
        let path = tmp.path().join(format!("bf16-{bf16}.toml"));
        std::fs::write(&path, format!("[train]\nbf16 = {bf16}\n")).unwrap();
        path.to_str().unwrap().to_string()
    };
    let (on, off) = (config(true), config(false));
    let run = |config: &str, more: &[&str]| {
        let mut args = small_train_args(corpus, ck_s);
        args.extend(["--config", config]);
        args.extend(more);
        aviary(&args)
    };
    let card_bf16 = || {
        let card: serde_json::Value =
            serde_json::from_slice(&std::fs::read(ck.join("card.json")).unwrap()).unwrap();
        card["training"]["config"]["bf16"].clone()
    };
    let out = run(&on, &["--max-steps", "6"]);
    let (_, stderr) = text(&out);
    if !aviary::model::Precision::Bf16.available() {
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("AVX-512 BF16") && stderr.contains("set bf16 = false"),
            "{stderr}"
        );
        assert!(
            !ck.join("card.json").exists(),
            "a failed start wrote a checkpoint"
        );
        common::skipped("the resume half: this CPU lacks AVX-512 BF16");
        return;
    }
    assert!(out.status.success(), "bf16 training failed:\n{stderr}");
    assert_eq!(card_bf16(), true);
    let out = run(&off, &["--restore", "--max-steps", "12"]);
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "resume without bf16 failed:\n{stderr}"
    );
    assert!(stdout.contains("finished at step 12"), "{stdout}");
    assert_eq!(card_bf16(), false, "the resumed run took the card's bf16");
}
