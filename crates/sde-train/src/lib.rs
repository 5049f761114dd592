//! # sde-train
//!
//! Training for score-based SDE models (Song et al., ICLR 2021).
#![warn(missing_docs)]

mod discrete;
mod ema;
mod error;
mod importance;
mod loss;
mod optim;
mod ssm;

pub use discrete::{draw_labels, DdpmLoss, SmldLoss};
pub use ema::Ema;
pub use error::{Error, Result};
pub use importance::ImportanceSampler;
pub use loss::{SdeLoss, SdeLossOptions, TrainingLoss};
pub use optim::{named_vars, Adam, AdamConfig, StepStats};
pub use ssm::{Projection, SlicedScoreMatching, SsmOptions};
