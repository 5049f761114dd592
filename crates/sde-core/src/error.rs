//! The error type of `sde-core`.

use candle_core::{DType, Shape};

/// Everything that can go wrong in `sde-core`: invalid parameters, mismatched shapes,
/// times outside `[0, T]`, non-finite values and errors from candle.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A constructor or function parameter is out of its domain (e.g. `sigma_min >= sigma_max`).
    #[error("invalid parameter `{name}` = {value}: {reason}")]
    InvalidParameter {
        /// Parameter name, as in the reference code.
        name: &'static str,
        /// The offending value.
        value: f64,
        /// What the value must satisfy.
        reason: &'static str,
    },
    /// The time tensor is not of shape `[batch]`.
    #[error("time tensor must have shape [{batch}] (one time per sample), got {got:?}")]
    TimeShape {
        /// Batch size of `x`.
        batch: usize,
        /// Shape of the time tensor that was passed.
        got: Shape,
    },
    /// A time lies outside `[0, T]` (or is not finite).
    #[error("time t = {t} at batch index {index} is outside [0, T = {t_end}]")]
    TimeOutOfRange {
        /// The offending time.
        t: f64,
        /// Its position in the batch.
        index: usize,
        /// End time `T` of the SDE.
        t_end: f64,
    },
    /// Two tensors (or a tensor and a parameter) disagree in shape.
    #[error("shape mismatch in {what}: expected {expected}, got {got}")]
    ShapeMismatch {
        /// Which argument.
        what: &'static str,
        /// What was expected.
        expected: String,
        /// What was passed.
        got: String,
    },
    /// A tensor holds NaN or infinity where a finite value is required.
    #[error("non-finite value (NaN or infinity) in {what}")]
    NonFinite {
        /// Which value.
        what: String,
    },
    /// A tensor argument has a dtype the function does not accept (e.g. an integer time
    /// tensor, whose coefficients would be computed and truncated in the integer dtype).
    #[error("{func}: `{arg}` must be {expected}, got dtype {got:?}")]
    DType {
        /// The function that was called (e.g. `VpSde::marginal_prob`).
        func: &'static str,
        /// Which argument.
        arg: &'static str,
        /// What it must be (e.g. "a float tensor (f16, bf16, f32 or f64)").
        expected: &'static str,
        /// The dtype that was passed.
        got: DType,
    },
    /// A tensor argument has the wrong rank (e.g. a scalar where a batch `[B, ...]` is needed).
    #[error("{func}: `{arg}` must have rank {expected}, got shape {got:?}")]
    Rank {
        /// The function that was called.
        func: &'static str,
        /// Which argument.
        arg: &'static str,
        /// The rank it must have, with the layout (e.g. "≥ 1 ([B, ...])").
        expected: &'static str,
        /// The shape that was passed.
        got: Shape,
    },
    /// The operation is not defined for this SDE, dtype or device.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// An error raised by a model (e.g. a network in `score-nets`) behind [`crate::ScoreModel`].
    #[error("model error: {0}")]
    Model(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A Brownian-tree query time is NaN or outside the tree's interval.
    #[error("Brownian query {which} = {t} (sample {index}) is outside the tree's interval [{t_min}, {t_max}]")]
    BrownianTime {
        /// Which argument (`t0`, `t1`, `t`, `t_next`).
        which: &'static str,
        /// Position of the sample in the query.
        index: usize,
        /// The offending time.
        t: f64,
        /// Start of the tree's interval.
        t_min: f64,
        /// End of the tree's interval.
        t_max: f64,
    },
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps any error raised by a model implementation.
    pub fn model<E: std::error::Error + Send + Sync + 'static>(e: E) -> Self {
        Error::Model(Box::new(e))
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
