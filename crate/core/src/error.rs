//! Errors a person can act on: each names the file (and the tensor, where there is one) and the problem.

use std::fmt;

/// Everything that can go wrong while reading models, tokenizers and text, or running the model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file is not in the expected format, or its contents contradict themselves.
    #[error("{file}: {problem}")]
    Format { file: String, problem: String },

    /// The file ends before the data it declares.
    #[error(
        "{file}: the file is truncated ({what} needs bytes up to {needed}, but the file has {len})"
    )]
    Truncated {
        file: String,
        what: String,
        needed: u64,
        len: u64,
    },

    /// A tensor the model needs is not in the checkpoint.
    #[error("{file}: the tensor `{tensor}` is missing")]
    MissingTensor { file: String, tensor: String },

    /// A tensor has another shape than the config implies.
    #[error(
        "{file}: the tensor `{tensor}` has shape {found:?}, but the config implies {expected:?}"
    )]
    ShapeMismatch {
        file: String,
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    /// A tensor is stored in a type webtune cannot read.
    #[error(
        "{file}: the tensor `{tensor}` has unsupported tensor type {dtype} (supported: {supported})"
    )]
    UnsupportedTensorType {
        file: String,
        tensor: String,
        dtype: String,
        supported: &'static str,
    },

    /// The configuration asks for something webtune does not implement or is inconsistent.
    #[error("{file}: {problem}")]
    Config { file: String, problem: String },

    /// Reading a file failed at the operating-system level.
    #[error("{file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },

    /// The tokenizer could not be built or could not encode/decode.
    #[error("{file}: tokenizer: {problem}")]
    Tokenizer { file: String, problem: String },

    /// A request that makes no sense for this model or these settings (e.g. an empty prompt).
    #[error("{0}")]
    Invalid(String),

    /// Training produced NaN or infinity (a loss, a gradient, a weight).
    #[error("{0}")]
    NonFinite(String),

    /// The compute device failed (e.g. a GPU readback failed or the device was lost).
    #[error("compute device: {0}")]
    Device(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn format(file: impl Into<String>, problem: impl fmt::Display) -> Self {
        Error::Format {
            file: file.into(),
            problem: problem.to_string(),
        }
    }

    pub(crate) fn config(file: impl Into<String>, problem: impl fmt::Display) -> Self {
        Error::Config {
            file: file.into(),
            problem: problem.to_string(),
        }
    }

    pub fn io(file: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            file: file.into(),
            source,
        }
    }
}
