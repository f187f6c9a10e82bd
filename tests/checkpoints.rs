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

#[test]
fn a_crash_mid_write_leaves_the_previous_checkpoint_loadable() {
    let dir = tempfile::tempdir().unwrap();
    good_checkpoint(dir.path());
    let before = std::fs::read(dir.path().join(WEIGHTS_FILE)).unwrap();
    // What a save killed mid-write leaves: a half-written temporary file beside the real one.
    std::fs::write(
        dir.path().join(format!(".{WEIGHTS_FILE}.999999.tmp")),
        &before[..before.len() / 3],
    )
    .unwrap();
    let ck = Checkpoint::load(dir.path(), &Device::Cpu).expect("previous checkpoint still loads");
    assert_eq!(ck.card.model, common::tiny_model());
    assert_eq!(
        std::fs::read(dir.path().join(WEIGHTS_FILE)).unwrap(),
        before
    );
}
