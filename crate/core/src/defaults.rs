//! The defaults a person starts from besides a run's own ([`RunSpec::default`]): the CLI's
//! flags and the page's form both read them (the page through `WebSession.defaults()`).

use serde::Serialize;

use crate::spec::RunSpec;

/// Tokens the before/after sample adds to its prompt.
pub const SAMPLE_TOKENS: usize = 40;
/// Steps between two reads of the training loss on a GPU ([`crate::spec::ExecSpec::log_every`]):
/// each read waits until the GPU has run everything queued, so that the next step's commands
/// are only recorded once it has gone idle. Half the default checkpoint period, where the loss
/// is read anyway: the chart still gets a point every few seconds.
pub const GPU_LOG_EVERY: usize = 5;

/// All defaults, as the page asks for them.
#[derive(Debug, Clone, Serialize)]
pub struct Defaults {
    pub spec: RunSpec,
    pub sample_tokens: usize,
}

pub fn defaults() -> Defaults {
    Defaults {
        spec: RunSpec::default(),
        sample_tokens: SAMPLE_TOKENS,
    }
}
