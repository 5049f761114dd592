//! # sde-train
//!
//! Training for score-based SDE models.
#![warn(missing_docs)]
