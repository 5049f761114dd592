//! The error type of `sde-eval`.

/// Everything that can go wrong in `sde-eval`: bad parameters, mismatched shapes, too few
/// samples, non-finite values, unreadable weight / statistics / shard files, and errors of
/// the crates below.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A parameter is out of its domain (e.g. `splits = 0`, `subset_size` larger than a set).
    #[error("invalid parameter `{name}` = {value}: {reason}")]
    InvalidParameter {
        /// Parameter name.
        name: &'static str,
        /// The offending value, printed.
        value: String,
        /// What the value must satisfy.
        reason: String,
    },
    /// A tensor or matrix has the wrong shape.
    #[error("shape mismatch in {what}: expected {expected}, got {got}")]
    ShapeMismatch {
        /// Which argument.
        what: &'static str,
        /// What was expected.
        expected: String,
        /// What was passed.
        got: String,
    },
    /// Fewer samples than the statistic needs (a covariance needs two).
    #[error("{what} needs at least {need} samples, got {got}")]
    NotEnoughSamples {
        /// Which statistic.
        what: &'static str,
        /// The minimum.
        need: usize,
        /// What was given.
        got: usize,
    },
    /// NaN or infinity where a finite value is required.
    #[error("non-finite value (NaN or infinity) in {what}")]
    NonFinite {
        /// Which value (and where).
        what: String,
    },
    /// A numerical routine did not converge.
    #[error("{what} did not converge: {reason}")]
    NoConvergence {
        /// Which routine.
        what: &'static str,
        /// Details.
        reason: String,
    },
    /// A weight, statistics, shard or summary file is missing, corrupt or of the wrong layout.
    #[error("file `{path}`: {reason}")]
    File {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An I/O error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// An error from `sde-core`.
    #[error(transparent)]
    Core(#[from] sde_core::Error),
    /// An error from `sde-solvers` (the likelihood behind bits/dim).
    #[error(transparent)]
    Solvers(#[from] sde_solvers::Error),
    /// An error from `score-nets` (its `.pth` loader).
    #[error(transparent)]
    Nets(#[from] score_nets::Error),
    /// A JSON error (summary files).
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// An error raised by a user's sampler or feature extractor.
    #[error("{what}: {source}")]
    User {
        /// Which callback.
        what: &'static str,
        /// Its error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn invalid(
    name: &'static str,
    value: impl ToString,
    reason: impl Into<String>,
) -> Error {
    Error::InvalidParameter {
        name,
        value: value.to_string(),
        reason: reason.into(),
    }
}

pub(crate) fn file_err(path: &std::path::Path, reason: impl Into<String>) -> Error {
    Error::File {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}
