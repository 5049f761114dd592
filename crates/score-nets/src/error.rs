//! The error type of `score-nets`.

/// Everything that can go wrong when building, loading or running a network.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An invalid or unsupported configuration (e.g. a knob combination the network cannot build).
    #[error("invalid network config: {0}")]
    Config(String),
    /// Strict weight loading found missing, unexpected or mis-shaped parameters (all listed).
    #[error("weights do not match the network: {0}")]
    WeightMismatch(String),
    /// A checkpoint or weight file could not be read (corrupt, truncated or foreign).
    #[error("cannot read checkpoint `{path}`: {reason}")]
    Checkpoint {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An input tensor has the wrong shape or dtype for this network.
    #[error("bad input: {0}")]
    Input(String),
    /// An error from `sde-core`.
    #[error(transparent)]
    Core(#[from] sde_core::Error),
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// An I/O error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl From<Error> for sde_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Core(e) => e,
            other => sde_core::Error::model(other),
        }
    }
}
