//! One source for the defaults a person starts from: the CLI's flags and the page's form both read
//! these (the page through `WebSession.defaults()`), with [`TrainConfig::default`] and
//! [`crate::lora::LoraConfig::default`].

use serde::Serialize;

use crate::train::TrainConfig;

/// Tokens a training window feeds the model.
pub const SEQ_LEN: usize = 128;
/// Share of the text held out for validation.
pub const VAL_FRACTION: f64 = 0.1;
/// Tokens the before/after sample adds to its prompt.
pub const SAMPLE_TOKENS: usize = 40;
/// Optimizer steps between two checkpoints ([`TrainConfig::checkpoint_every`]).
pub const CHECKPOINT_EVERY: usize = 10;
/// Steps between two reads of the training loss on a GPU ([`TrainConfig::log_every`]): each
/// read waits until the GPU has run everything queued, so that the next step's commands are
/// only recorded once it has gone idle. Half of [`CHECKPOINT_EVERY`], where the loss is read
/// anyway: the chart still gets a point every few seconds.
pub const GPU_LOG_EVERY: usize = 5;

/// All defaults, as the page asks for them.
#[derive(Debug, Clone, Serialize)]
pub struct Defaults {
    pub seq_len: usize,
    pub val_fraction: f64,
    pub sample_tokens: usize,
    pub train: TrainConfig,
}

pub fn defaults() -> Defaults {
    Defaults {
        seq_len: SEQ_LEN,
        val_fraction: VAL_FRACTION,
        sample_tokens: SAMPLE_TOKENS,
        train: TrainConfig::default(),
    }
}
