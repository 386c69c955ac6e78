//! Limits on what a file or a setting may ask for, checked before anything is allocated for it.
//!
//! Files come from strangers and settings are typed by hand: a layer count of 2^64, a vocabulary
//! id beyond the embedding or a batch of 10^9 must end in an error that names the file or the
//! setting, never in an allocation failure or a panic (on wasm a panic kills the module). The
//! limits are far above any model or run this tool is for (README, "Limits"); the page shows the
//! settings' limits next to the fields (`WebSession.limits()`).

use serde::Serialize;

/// Transformer layers.
pub const MAX_LAYERS: usize = 512;
/// Hidden size, intermediate size, head dimension.
pub const MAX_WIDTH: usize = 1 << 17;
/// Attention heads (query or key/value).
pub const MAX_HEADS: usize = 1024;
/// Vocabulary entries (tokenizer and embedding).
pub const MAX_VOCAB: usize = 1 << 21;
/// Parameters of a base model (8.6 B). Whether a model fits the memory where it runs is
/// [`crate::memory`]'s estimate: in the page, wasm32's 4 GiB.
pub const MAX_PARAMETERS: u64 = 1 << 33;
/// Bytes of one text file; bigger files are refused with a message (split them).
pub const MAX_TEXT_BYTES: usize = 64 << 20;
/// Items in one GGUF metadata array (a vocabulary is the largest there is).
pub const MAX_GGUF_ARRAY: usize = 1 << 21;

/// Training settings.
pub const MAX_STEPS: usize = 1_000_000;
pub const MAX_BATCH_SIZE: usize = 512;
pub const MAX_GRAD_ACCUM: usize = 1024;
pub const MIN_SEQ_LEN: usize = 2;
pub const MAX_SEQ_LEN: usize = 8192;
/// Tokens in one micro-batch (batch size x sequence length): activations grow with it.
pub const MAX_BATCH_TOKENS: usize = 1 << 16;
pub const MAX_RANK: usize = 1024;
pub const MAX_LEARNING_RATE: f64 = 1.0;
/// Evaluation windows and the period between evaluations.
pub const MAX_EVAL_WINDOWS: usize = 1 << 16;
/// Bytes a batch's attention scores may take (one layer's, or every layer's when training
/// keeps them for the backward pass): wasm32 addresses 4 GiB in all.
pub const MAX_ATTENTION_BYTES: u64 = if cfg!(target_arch = "wasm32") {
    1 << 30
} else {
    8 << 30
};
/// Tokens a generation may add.
pub const MAX_NEW_TOKENS: usize = 4096;

/// The settings' limits, as the page shows them (and sets its form's ranges from).
#[derive(Debug, Clone, Serialize)]
pub struct SettingLimits {
    pub max_steps: usize,
    pub max_batch_size: usize,
    pub max_grad_accum: usize,
    pub min_seq_len: usize,
    pub max_seq_len: usize,
    pub max_batch_tokens: usize,
    pub max_rank: usize,
    pub max_learning_rate: f64,
    pub max_text_bytes: usize,
    pub max_new_tokens: usize,
}

pub fn setting_limits() -> SettingLimits {
    SettingLimits {
        max_steps: MAX_STEPS,
        max_batch_size: MAX_BATCH_SIZE,
        max_grad_accum: MAX_GRAD_ACCUM,
        min_seq_len: MIN_SEQ_LEN,
        max_seq_len: MAX_SEQ_LEN,
        max_batch_tokens: MAX_BATCH_TOKENS,
        max_rank: MAX_RANK,
        max_learning_rate: MAX_LEARNING_RATE,
        max_text_bytes: MAX_TEXT_BYTES,
        max_new_tokens: MAX_NEW_TOKENS,
    }
}
