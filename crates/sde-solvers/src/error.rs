//! The error type of `sde-solvers`.

/// Everything that can go wrong while sampling, solving or evaluating a likelihood.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A solver option is out of its domain (e.g. `n_steps_each == 0`, `snr <= 0`, `sampling_eps <= 0`).
    #[error("invalid parameter `{name}` = {value}: {reason}")]
    InvalidParameter {
        /// Option name, as in the reference code.
        name: &'static str,
        /// The offending value.
        value: f64,
        /// What it must satisfy.
        reason: &'static str,
    },
    /// A sampler or solver met NaN or infinity.
    #[error("non-finite value in {what} at step {step} (t = {t})")]
    NonFinite {
        /// What became non-finite (e.g. "x after the predictor").
        what: String,
        /// Step index.
        step: usize,
        /// Time at that step.
        t: f64,
    },
    /// An adaptive solver (the RK45 ODE solver, the adaptive SDE sampler) used up `max_steps`.
    #[error("adaptive solver reached max_steps = {max_steps} at t = {t}")]
    MaxSteps {
        /// The limit.
        max_steps: usize,
        /// Where it stopped.
        t: f64,
    },
    /// An adaptive step size fell below what floating point can resolve.
    #[error("adaptive step size {h} too small at t = {t}")]
    StepSizeTooSmall {
        /// Step size.
        h: f64,
        /// Time.
        t: f64,
    },
    /// Mismatched shapes between arguments (e.g. an inpainting mask and the data).
    #[error("shape mismatch in {what}: expected {expected}, got {got}")]
    ShapeMismatch {
        /// Which argument.
        what: &'static str,
        /// Expected shape.
        expected: String,
        /// Shape passed.
        got: String,
    },
    /// The operation is not defined for this input.
    #[error("unsupported: {0}")]
    Unsupported(String),
    // --- sampler framework (schedules, steps, driver) ---
    /// A time schedule is not usable: fewer than one step, a time outside (0, T], not strictly
    /// decreasing, or not finite.
    #[error("invalid schedule {schedule}: {reason} (at index {index}, value {value})")]
    InvalidSchedule {
        /// Which schedule (e.g. "Times", "Karras").
        schedule: &'static str,
        /// What is wrong.
        reason: &'static str,
        /// Position of the offending value (0 when the whole schedule is at fault).
        index: usize,
        /// The offending value.
        value: f64,
    },
    /// A score function returned a tensor of the wrong shape or dtype.
    #[error(
        "score function `{score_fn}` returned shape {got_shape:?} dtype {got_dtype:?} at step {step} \
         (t = {t}); expected shape {expected_shape:?} dtype {expected_dtype:?} (those of x)"
    )]
    ScoreOutput {
        /// Type name of the score function.
        score_fn: &'static str,
        /// The shape of x.
        expected_shape: Vec<usize>,
        /// The shape returned.
        got_shape: Vec<usize>,
        /// The dtype of x.
        expected_dtype: candle_core::DType,
        /// The dtype returned.
        got_dtype: candle_core::DType,
        /// Step index of the driver.
        step: usize,
        /// Time of that step.
        t: f64,
    },
    /// A mask (inpainting) holds a value other than 0 or 1.
    #[error("{what} must hold only 0 and 1, got {value} at flat index {index}")]
    InvalidMask {
        /// Which mask.
        what: &'static str,
        /// The offending value.
        value: f64,
        /// Its flat index.
        index: usize,
    },
    /// An error from `sde-core` (SDE, score function or model).
    #[error(transparent)]
    Core(#[from] sde_core::Error),
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
