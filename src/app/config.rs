//! The one configuration: model shape, training hyperparameters, sampling defaults, the
//! cleaning policy of new bots. Layered
//! as defaults, then a TOML file (`config/aviary.toml` documents every key), then flags.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::corpus::CleanPolicy;
use crate::generate::{NoveltyConfig, RankConfig, SampleConfig};
use crate::model::ModelConfig;
use crate::schedule::Schedule;
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
    /// How a bot's candidates are ranked.
    pub rank: RankConfig,
    /// The cleaning policy new bots start with (each bot keeps its own copy).
    pub clean: CleanPolicy,
    /// What fine-tuning a bot changes from `[train]`.
    pub finetune: FinetuneConfig,
    /// How a bot's candidates are judged against its training tweets.
    pub novelty: NoveltyConfig,
    /// The X API: where it is, how long to wait, what it costs.
    pub x: XConfig,
    /// The posting schedule new bots start with (`aviary schedule set` changes a bot's own).
    pub schedule: Schedule,
}

/// How aviary talks to the X API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct XConfig {
    /// The API's base URL (a test server's in tests).
    pub api_base: String,
    /// Seconds to wait for an answer before treating a call as failed.
    pub timeout_seconds: u64,
    /// Sends of one tweet before it is marked failed (server and network errors).
    pub max_attempts: u32,
    /// Seconds after a send whose answer was lost before the timeline is read for it (X's
    /// timeline can lag a moment behind a post).
    pub settle_seconds: u64,
    /// Seconds before the first retry after a server or network error; each further retry
    /// waits twice as long, an hour at most.
    pub retry_seconds: u64,
    /// US dollars X bills per post (pay-per-use "Content: Create").
    pub cost_per_post: f64,
    /// US dollars X bills per post with a link ("Content: Create (with URL)").
    pub cost_per_post_with_url: f64,
}

impl Default for XConfig {
    fn default() -> Self {
        XConfig {
            api_base: "https://api.x.com".into(),
            timeout_seconds: 30,
            max_attempts: 5,
            settle_seconds: 30,
            retry_seconds: 30,
            // docs.x.com/x-api/getting-started/pricing, read 2026-11-28.
            cost_per_post: 0.015,
            cost_per_post_with_url: 0.2,
        }
    }
}

/// The training settings fine-tuning uses instead of `[train]`'s: a bot's few thousand tweets
/// make short epochs, so validation at each epoch's end and a patience and threshold fit for
/// small gains (docs/quality.md gives the figures behind each value).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FinetuneConfig {
    /// RMSprop learning rate.
    pub learning_rate: f64,
    /// Rows per batch.
    pub batch_size: usize,
    /// Passes over the bot's tweets at most.
    pub num_epochs: u64,
    /// Validate every this many steps, and at every epoch end (0: only at epoch ends).
    pub val_every: u64,
    /// Early stopping: validations without an improvement of `min_delta` before stopping.
    pub patience: u32,
    /// Early stopping: the smallest drop in validation loss that counts.
    pub min_delta: f64,
    /// Share of the way each validation moves the smoothed curve early stopping reads.
    pub smoothing: f64,
    /// The learning rate is multiplied by this after every `lr_patience` validations without
    /// an improvement.
    pub lr_decay: f64,
    /// Validations without an improvement before each learning-rate decay.
    pub lr_patience: u32,
    /// Dropout during fine-tuning.
    pub drop_rate: f32,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        FinetuneConfig {
            learning_rate: 2e-3,
            batch_size: 128,
            num_epochs: 8,
            val_every: 0,
            patience: 2,
            min_delta: 0.002,
            smoothing: 0.5,
            lr_decay: 0.5,
            lr_patience: 1,
            drop_rate: 0.1,
        }
    }
}

impl FinetuneConfig {
    /// Puts these settings into `config`'s `[train]` and `[model]`.
    pub fn apply(&self, config: &mut Config) {
        let t = &mut config.train;
        t.learning_rate = self.learning_rate;
        t.batch_size = self.batch_size;
        t.num_epochs = self.num_epochs;
        t.val_every = self.val_every;
        t.patience = self.patience;
        t.min_delta = self.min_delta;
        t.smoothing = self.smoothing;
        t.lr_decay = self.lr_decay;
        t.lr_patience = self.lr_patience;
        config.model.drop_rate = self.drop_rate;
    }
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

    /// Every `section.key` of a TOML table.
    fn keys(v: &toml::Value) -> std::collections::BTreeSet<String> {
        let mut out = std::collections::BTreeSet::new();
        for (section, table) in v.as_table().expect("a table") {
            for key in table.as_table().expect("sections are tables").keys() {
                out.insert(format!("{section}.{key}"));
            }
        }
        out
    }

    #[test]
    fn shipped_file_states_the_defaults() {
        let shipped: Config = toml::from_str(DEFAULT_TOML).expect("config/aviary.toml parses");
        assert_eq!(
            shipped,
            Config::default(),
            "config/aviary.toml and the code disagree"
        );
        // Serde fills a missing key with its default, so equal values cannot see a deleted
        // line: the file must also state every key there is, and no other.
        let in_file = keys(&toml::from_str(DEFAULT_TOML).unwrap());
        let in_code = keys(&toml::Value::try_from(Config::default()).unwrap());
        let missing: Vec<_> = in_code.difference(&in_file).collect();
        assert!(missing.is_empty(), "config/aviary.toml lacks {missing:?}");
        assert_eq!(in_file, in_code);
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
