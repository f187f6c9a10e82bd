//! aviary: a terminal app for people who run Twitter/X bots. Each bot is a small
//! character-level LSTM language model fine-tuned on one account's tweets.
//!
//! Parts: [`corpus`] (getting tweets in), [`store`] (the database), the engine ([`model`],
//! [`train`], [`generate`]),
//! and the application layer [`app`] that combines them for the faces ([`cli`]).
#![deny(missing_docs)]

pub mod alloc;
pub mod app;
pub mod cli;
pub mod corpus;
pub mod error;
pub mod generate;
pub mod hash;
pub mod model;
pub mod schedule;
pub mod store;
pub mod train;
pub mod tui;
pub mod tweet_len;
pub mod twitter;

pub use error::{Error, Result};
