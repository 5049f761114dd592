//! The error type of `sde-train`.

use std::path::PathBuf;

/// Everything that can go wrong while training: bad options, shape mismatches, non-finite
/// losses, unreadable data files and corrupt or mismatched checkpoints.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An option or parameter is out of its domain (e.g. `eps ≤ 0`, `batch_size = 0`).
    #[error("invalid parameter `{name}` = {value}: {reason}")]
    InvalidParameter {
        /// Parameter name (the reference's name where there is one).
        name: &'static str,
        /// The offending value.
        value: f64,
        /// What the value must satisfy.
        reason: &'static str,
    },
    /// Two tensors (or a tensor and an option) disagree in shape or dtype.
    #[error("shape mismatch in {what}: expected {expected}, got {got}")]
    ShapeMismatch {
        /// Which argument.
        what: &'static str,
        /// What was expected.
        expected: String,
        /// What was passed.
        got: String,
    },
    /// A loss, gradient or parameter became NaN or infinite.
    #[error("non-finite value (NaN or infinity) in {what}")]
    NonFinite {
        /// Which value.
        what: String,
    },
    /// A file could not be read or written.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A data file (CIFAR-10, MNIST IDX, image folder) is missing or malformed.
    #[error("bad data file {path}: {reason}")]
    Data {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A checkpoint file is corrupt or truncated (its safetensors header or data do not parse).
    #[error("corrupt checkpoint {path}: {reason}")]
    CorruptCheckpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A checkpoint parses but does not fit the model being resumed (missing tensor, wrong
    /// shape, different config, unknown format version).
    #[error("checkpoint {path} does not match: {what}")]
    CheckpointMismatch {
        /// The checkpoint file.
        path: PathBuf,
        /// What differs.
        what: String,
    },
    /// A checkpoint of another format version (e.g. format 1, whose metadata was outside the
    /// checksum): re-save it with the version that wrote it, or start afresh.
    #[error("checkpoint {path} has format {found:?}; this version reads only {supported:?}")]
    UnsupportedCheckpointVersion {
        /// The checkpoint file.
        path: PathBuf,
        /// The `format` tag found in the file.
        found: String,
        /// The format this version reads.
        supported: &'static str,
    },
    /// A user hook or gradient reducer failed.
    #[error("hook failed: {0}")]
    Hook(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// An error from `sde-core` (SDE, score adapter, model).
    #[error(transparent)]
    Core(#[from] sde_core::Error),
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A JSON (de)serialisation error (configs, logs).
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps any error raised by a hook or gradient reducer.
    pub fn hook<E: std::error::Error + Send + Sync + 'static>(e: E) -> Self {
        Error::Hook(Box::new(e))
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Returns `InvalidParameter` unless `value` is finite and satisfies `ok`.
pub(crate) fn check_param(
    name: &'static str,
    value: f64,
    ok: bool,
    reason: &'static str,
) -> Result<()> {
    if value.is_finite() && ok {
        Ok(())
    } else {
        Err(Error::InvalidParameter {
            name,
            value,
            reason,
        })
    }
}
