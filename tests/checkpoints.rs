//! Bad checkpoints get clear errors naming the file and the problem; a crash mid-write leaves
//! the previous checkpoint loadable.

mod common;

use std::path::Path;

use aviary::model::checkpoint::{save_tensors, CARD_FILE, WEIGHTS_FILE};
use aviary::model::{Card, Checkpoint, Vocab};
use candle_core::Device;

fn good_checkpoint(dir: &Path) {
    let cfg = common::tiny_model();
    let vocab = Vocab::from_chars("abcdef ".chars().collect());
    let w = cfg.init_weights(vocab.len(), 3, &Device::Cpu).unwrap();
    Checkpoint::save(dir, &Card::new(cfg, vocab), &w).unwrap();
}

fn load_err(dir: &Path) -> String {
    match Checkpoint::load(dir, &Device::Cpu) {
        Ok(_) => panic!("{} loaded although it is bad", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn truncated_weights_are_named_and_explained() {
    let dir = tempfile::tempdir().unwrap();
    good_checkpoint(dir.path());
    let path = dir.path().join(WEIGHTS_FILE);
    let bytes = std::fs::read(&path).unwrap();
    for keep in [0, 5, 100, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..keep]).unwrap();
        let e = load_err(dir.path());
        assert!(
            e.contains(WEIGHTS_FILE) && e.contains("truncated"),
            "{keep} bytes: {e}"
        );
        assert!(e.contains("HINT:"), "{e}");
    }
}

#[test]
fn foreign_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Not a checkpoint directory at all.
    let e = load_err(dir.path());
    assert!(
        e.contains(CARD_FILE) && e.contains("not an aviary checkpoint"),
        "{e}"
    );
    // Some other JSON as the card.
    std::fs::write(dir.path().join(CARD_FILE), r#"{"model_type": "gpt2"}"#).unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("not an aviary checkpoint card"), "{e}");
    // Not JSON.
    std::fs::write(dir.path().join(CARD_FILE), "garbage").unwrap();
    assert!(load_err(dir.path()).contains("not valid JSON"));
    // A real card but a safetensors file from elsewhere (no aviary metadata).
    good_checkpoint(dir.path());
    let t = candle_core::Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(
        &[("x", t)].into_iter().collect(),
        dir.path().join(WEIGHTS_FILE),
    )
    .unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("not one aviary wrote"), "{e}");
    // A card from a newer aviary.
    good_checkpoint(dir.path());
    let card = std::fs::read_to_string(dir.path().join(CARD_FILE)).unwrap();
    std::fs::write(
        dir.path().join(CARD_FILE),
        card.replace("\"format_version\": 1", "\"format_version\": 9"),
    )
    .unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("newer aviary"), "{e}");
}

#[test]
fn weights_that_do_not_match_the_card_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    good_checkpoint(dir.path());
    let card_path = dir.path().join(CARD_FILE);
    let card = std::fs::read_to_string(&card_path).unwrap();
    std::fs::write(
        &card_path,
        card.replace("\"rnn_size\": 32", "\"rnn_size\": 64"),
    )
    .unwrap();
    let e = load_err(dir.path());
    assert!(
        e.contains(WEIGHTS_FILE) && e.contains("has shape [128, 8], the card says [256, 8]"),
        "{e}"
    );
    // A weight missing altogether.
    good_checkpoint(dir.path());
    let ck = Checkpoint::load(dir.path(), &Device::Cpu).unwrap();
    let mut w = ck.weights.clone();
    w.remove("out.bias");
    save_tensors(&dir.path().join(WEIGHTS_FILE), w.iter(), Default::default()).unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("`out.bias` is missing"), "{e}");
}

/// A save that fails partway through writing (the process may write no more than half a
/// weights file: RLIMIT_FSIZE, so each write past it fails with EFBIG) leaves the previous
/// checkpoint as it was, loadable, and no temporary file behind.
#[cfg(unix)]
#[test]
fn a_save_failing_mid_write_leaves_the_previous_checkpoint_loadable() {
    use std::os::unix::process::CommandExt;
    let tmp = tempfile::tempdir().unwrap();
    let corpus = common::corpus_file(tmp.path(), "tweets.txt", 300);
    let dir = tmp.path().join("ck");
    let train = |extra: &[&str]| {
        let mut c = common::train_tiny(&corpus, &dir);
        c.args(["--val-every", "1", "--patience", "0"]).args(extra);
        c
    };
    let o = train(&["--max-steps", "2"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let weights = std::fs::read(dir.join(WEIGHTS_FILE)).unwrap();
    let card = std::fs::read(dir.join(CARD_FILE)).unwrap();
    let limit = (weights.len() / 2) as libc::rlim_t;
    let mut resumed = train(&["--restore", "--max-steps", "4"]);
    // SAFETY: setrlimit and signal are async-signal-safe; this runs in the child before exec.
    unsafe {
        resumed.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let o = resumed.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(2),
        "the save should have failed: {err}"
    );
    assert!(
        err.contains(&dir.display().to_string()),
        "the file is named: {err}"
    );
    // The previous checkpoint: the same bytes, and it loads.
    assert_eq!(std::fs::read(dir.join(WEIGHTS_FILE)).unwrap(), weights);
    assert_eq!(std::fs::read(dir.join(CARD_FILE)).unwrap(), card);
    let ck = Checkpoint::load(&dir, &Device::Cpu).expect("previous checkpoint still loads");
    assert_eq!(ck.card.model, common::tiny_model());
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}
