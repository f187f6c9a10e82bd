//! The one configuration: model shape, training hyperparameters, sampling defaults, the
//! cleaning policy of new bots. Layered
//! as defaults, then a TOML file (`config/aviary.toml` documents every key), then flags.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::corpus::CleanPolicy;
use crate::generate::SampleConfig;
use crate::model::ModelConfig;
use crate::train::TrainConfig;
use crate::{Error, Result};

/// Every setting aviary reads from a config file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The model's shape (for new models; a checkpoint carries its own).
    pub model: ModelConfig,
    /// Training hyperparameters.
    pub train: TrainConfig,
    /// Sampling defaults.
    pub generate: SampleConfig,
    /// The cleaning policy new bots start with (each bot keeps its own copy).
    pub clean: CleanPolicy,
}

/// The documented default config file, as shipped.
pub const DEFAULT_TOML: &str = include_str!("../../config/aviary.toml");

impl Config {
    /// The defaults, overlaid with `path` when given. An unknown key or a wrong type is an
    /// error naming the file and the key.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        match path {
            None => Ok(Config::default()),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
                toml::from_str(&text).map_err(|e| Error::Config {
                    problem: format!("{}: {e}", p.display()),
                    hint: "compare with config/aviary.toml, which lists every key".into(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_file_states_the_defaults() {
        let shipped: Config = toml::from_str(DEFAULT_TOML).expect("config/aviary.toml parses");
        assert_eq!(
            shipped,
            Config::default(),
            "config/aviary.toml and the code disagree"
        );
    }

    #[test]
    fn unknown_keys_are_refused_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("my.toml");
        std::fs::write(&p, "[train]\nlearning_rat = 0.1\n").unwrap();
        let e = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("my.toml") && e.contains("learning_rat"), "{e}");
        std::fs::write(&p, "[train]\nlearning_rate = 0.01\n").unwrap();
        let c = Config::load(Some(&p)).unwrap();
        assert_eq!(c.train.learning_rate, 0.01);
        assert_eq!(c.train.batch_size, TrainConfig::default().batch_size);
    }
}
