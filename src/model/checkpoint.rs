//! Checkpoints on disk: `<dir>/model.safetensors` (the weights) beside `<dir>/card.json`
//! (what the weights are: model config, vocabulary, versions, and the trainer's record).
//!
//! Every file is written atomically (temporary file, fsync, rename, fsync of the directory),
//! weights before the card, so a crash at any moment leaves the previous checkpoint loadable.
//! Loading checks everything it can and names the file and the problem when it fails.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::{CharLstm, ModelConfig, Vocab};
use crate::{Error, Result};

/// File name of the card inside a checkpoint directory.
pub const CARD_FILE: &str = "card.json";
/// File name of the weights inside a checkpoint directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The `format` every aviary card and tensor file carries.
pub const FORMAT: &str = "aviary-checkpoint";
/// The newest format version this build reads and the one it writes.
pub const FORMAT_VERSION: u32 = 1;

/// What a checkpoint's weights are. Written as `card.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Card {
    /// Always [`FORMAT`]: tells an aviary checkpoint from any other JSON.
    pub format: String,
    /// [`FORMAT_VERSION`] of the aviary that wrote it.
    pub format_version: u32,
    /// Version of the aviary that wrote it.
    pub aviary_version: String,
    /// The model's shape.
    pub model: ModelConfig,
    /// The vocabulary the weights were trained with.
    pub vocab: Vocab,
    /// The trainer's record: hyperparameters, corpus statistics, progress, best validation
    /// loss, the resume-state file. Opaque to the model.
    #[serde(default)]
    pub training: Option<serde_json::Value>,
    /// Free text from whoever made the checkpoint (corpus, hardware, wall time...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
}

impl Card {
    /// A card for weights of this shape and vocabulary.
    pub fn new(model: ModelConfig, vocab: Vocab) -> Self {
        Card {
            format: FORMAT.to_string(),
            format_version: FORMAT_VERSION,
            aviary_version: env!("CARGO_PKG_VERSION").to_string(),
            model,
            vocab,
            training: None,
            notes: None,
        }
    }
}

/// A loaded checkpoint: its card and its weights.
pub struct Checkpoint {
    /// The directory it was loaded from.
    pub dir: PathBuf,
    /// What the weights are.
    pub card: Card,
    /// The weights, by name, checked against the card.
    pub weights: HashMap<String, Tensor>,
}

impl Checkpoint {
    /// Loads and checks `<dir>/card.json` and `<dir>/model.safetensors`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let card = read_card(dir)?;
        let path = dir.join(WEIGHTS_FILE);
        let (weights, _) = load_tensors(&path, device)?;
        check_weights(&path, &weights, &card.model, card.vocab.len())?;
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            card,
            weights,
        })
    }

    /// A checkpoint held in memory (the one built into the binary); `name` stands for its
    /// directory in errors.
    pub fn from_bytes(name: &Path, card: &str, weights: &[u8], device: &Device) -> Result<Self> {
        let card = parse_card(&name.join(CARD_FILE), card)?;
        let path = name.join(WEIGHTS_FILE);
        let (weights, _) = parse_tensors(&path, weights, device)?;
        check_weights(&path, &weights, &card.model, card.vocab.len())?;
        Ok(Checkpoint {
            dir: name.to_path_buf(),
            card,
            weights,
        })
    }

    /// Writes `weights` then `card` into `dir` (created if needed), each atomically.
    pub fn save(dir: &Path, card: &Card, weights: &HashMap<String, Tensor>) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        save_tensors(&dir.join(WEIGHTS_FILE), weights.iter(), HashMap::new())?;
        write_card(dir, card)
    }

    /// The model over these weights.
    pub fn model(&self, device: &Device) -> Result<CharLstm> {
        CharLstm::from_weights(
            &self.weights,
            &self.card.model,
            self.card.vocab.len(),
            device,
        )
    }
}

/// Reads and checks `<dir>/card.json`.
pub fn read_card(dir: &Path) -> Result<Card> {
    let path = dir.join(CARD_FILE);
    if !dir.is_dir() {
        return Err(Error::checkpoint(
            dir,
            "no such checkpoint directory",
            "pass the directory that `aviary train --checkpoint-dir` wrote",
        ));
    }
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::checkpoint(
                &path,
                "missing: this directory is not an aviary checkpoint",
                "pass the directory that `aviary train --checkpoint-dir` wrote",
            ))
        }
        Err(e) => return Err(Error::io(&path, e)),
    };
    parse_card(&path, &text)
}

/// Parses and checks a card's text; `path` names it in errors.
pub fn parse_card(path: &Path, text: &str) -> Result<Card> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        Error::checkpoint(
            path,
            format!("not valid JSON ({e})"),
            "the card was damaged outside aviary; restore it or retrain",
        )
    })?;
    if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
        return Err(Error::checkpoint(
            path,
            format!("not an aviary checkpoint card (no \"format\": \"{FORMAT}\")"),
            "pass the directory that `aviary train --checkpoint-dir` wrote",
        ));
    }
    let version = value
        .get("format_version")
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    if version > FORMAT_VERSION as u64 {
        return Err(Error::checkpoint(
            path,
            format!("written by a newer aviary (format {version}; this build reads up to {FORMAT_VERSION})"),
            "upgrade aviary to use this checkpoint",
        ));
    }
    serde_json::from_value(value).map_err(|e| {
        Error::checkpoint(
            path,
            format!("card does not describe a model this build understands ({e})"),
            "the card was edited or damaged; restore it or retrain",
        )
    })
}

/// Writes `<dir>/card.json` atomically.
pub fn write_card(dir: &Path, card: &Card) -> Result<()> {
    let json = serde_json::to_vec_pretty(card).expect("a card always serialises");
    write_atomic(&dir.join(CARD_FILE), &json)
}

/// Checks that `weights` are exactly the tensors `model` needs for `vocab_size`.
pub fn check_weights(
    path: &Path,
    weights: &HashMap<String, Tensor>,
    model: &ModelConfig,
    vocab_size: usize,
) -> Result<()> {
    let hint = "the weights do not belong to this card: keep model.safetensors and card.json of one checkpoint together";
    for (name, shape) in model.weight_shapes(vocab_size) {
        match weights.get(&name) {
            None => {
                return Err(Error::checkpoint(
                    path,
                    format!("weight `{name}` is missing"),
                    hint,
                ))
            }
            Some(t) if t.dims() != shape.as_slice() => {
                return Err(Error::checkpoint(
                    path,
                    format!(
                        "weight `{name}` has shape {:?}, the card says {:?}",
                        t.dims(),
                        shape
                    ),
                    hint,
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Writes tensors with string metadata to a safetensors file, atomically. The metadata always
/// carries `format` = [`FORMAT`].
pub fn save_tensors<'a>(
    path: &Path,
    tensors: impl Iterator<Item = (&'a String, &'a Tensor)>,
    mut metadata: HashMap<String, String>,
) -> Result<()> {
    metadata.insert("format".to_string(), FORMAT.to_string());
    let cpu: Vec<(String, Tensor)> = tensors
        .map(|(k, t)| Ok((k.clone(), t.to_device(&Device::Cpu)?)))
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(cpu.iter().map(|(k, t)| (k.as_str(), t)), Some(metadata))
        .map_err(|e| {
            Error::checkpoint(
                path,
                format!("cannot serialise tensors: {e}"),
                "report this as a bug",
            )
        })?;
    write_atomic(path, &bytes)
}

/// Reads a safetensors file written by [`save_tensors`]: its tensors and metadata.
pub fn load_tensors(
    path: &Path,
    device: &Device,
) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::checkpoint(
                path,
                "missing",
                "the checkpoint is incomplete; train again into this directory",
            ))
        }
        Err(e) => return Err(Error::io(path, e)),
    };
    parse_tensors(path, &bytes, device)
}

/// Parses the bytes of a safetensors file written by [`save_tensors`]; `path` names it in
/// errors.
pub fn parse_tensors(
    path: &Path,
    bytes: &[u8],
    device: &Device,
) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let damaged = "the file was damaged outside aviary (aviary's own writes are atomic): restore it or retrain";
    let broken = |e| {
        Error::checkpoint(
            path,
            format!("truncated or not a safetensors file ({e:?})"),
            damaged,
        )
    };
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes).map_err(broken)?;
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(broken)?;
    let metadata = header.metadata().clone().unwrap_or_default();
    if metadata.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(Error::checkpoint(
            path,
            "a safetensors file, but not one aviary wrote",
            "pass a checkpoint written by `aviary train`",
        ));
    }
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        let t = candle_core::safetensors::Load::load(&view, device).map_err(|e| {
            Error::checkpoint(
                path,
                format!("tensor `{name}` cannot be read ({e})"),
                damaged,
            )
        })?;
        tensors.insert(name, t);
    }
    Ok((tensors, metadata))
}

/// Replaces `path` with `bytes` so that a crash leaves either the old file or the new one:
/// write a temporary file beside it, fsync it, rename it over, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself must reach the disk too.
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;

    fn tiny() -> (ModelConfig, Vocab) {
        let cfg = ModelConfig {
            embedding_size: 4,
            rnn_size: 8,
            num_layers: 1,
            drop_rate: 0.0,
        };
        (cfg, Vocab::from_chars("abc".chars().collect()))
    }

    #[test]
    fn save_then_load_round_trips_bit_for_bit() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, vocab) = tiny();
        let w = cfg.init_weights(vocab.len(), 1, &Device::Cpu).unwrap();
        Checkpoint::save(dir.path(), &Card::new(cfg.clone(), vocab.clone()), &w).unwrap();
        let ck = Checkpoint::load(dir.path(), &Device::Cpu).unwrap();
        assert_eq!(ck.card.vocab, vocab);
        assert_eq!(ck.card.model, cfg);
        for (k, t) in &w {
            let a: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            let b: Vec<f32> = ck.weights[k].flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(a, b, "{k}");
        }
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left behind");
    }
}
