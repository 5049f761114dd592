//! # sde-train
//!
//! Training for score-based SDE models (Song et al., ICLR 2021).
#![warn(missing_docs)]

mod discrete;
mod error;
mod importance;
mod loss;
mod ssm;

pub use discrete::{draw_labels, DdpmLoss, SmldLoss};
pub use error::{Error, Result};
pub use importance::ImportanceSampler;
pub use loss::{SdeLoss, SdeLossOptions, TrainingLoss};
pub use ssm::{Projection, SlicedScoreMatching, SsmOptions};
