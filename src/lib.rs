//! # scoresde
//!
//! The umbrella package of the scoresde-rs workspace. It holds the examples (`examples/`), the
//! benches (`benches/`) and end-to-end tests, and this small library of helpers they share:
//! [`plot`] (scatter plots, vector fields and trajectories as PNG, with no plotting dependency
//! beyond `image`) and [`metrics`] (two-sample statistics and mode coverage).
//!
//! The crates themselves are re-exported for convenience.
#![warn(missing_docs)]

pub mod fast;
pub mod images;
pub mod metrics;
pub mod mnist;
pub mod mnist_eval;
pub mod plot;
pub mod report;
pub mod toy;

pub use score_nets;
pub use sde_core;
pub use sde_solvers;
pub use sde_train;

/// The README's quick start, compiled and run as a doc test so it stays true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
