//! # sde-solvers
//!
//! Samplers for score-based SDE models: one driver ([`driver::Sampler`]) that runs any
//! [`step::Step`] over any [`schedule::Schedule`]; predictors, correctors and the
//! predictor–corrector sampler, an adaptive RK45 probability-flow ODE sampler, exact likelihoods (bits/dim) with the
//! Hutchinson–Skilling trace estimator, and controllable generation. Everything works for any
//! type implementing [`sde_core::Sde`], including a user's own.
#![warn(missing_docs)]

pub mod controllable;
pub mod corrector;
pub mod driver;
mod error;
pub mod harness;
pub mod likelihood;
pub mod ode;
pub mod ode_sampler;
pub mod pc;
pub mod predictor;
pub mod samplers;
pub mod schedule;
pub mod step;

pub use error::{Error, Result};

/// The crate README's example, compiled and run as a doc test.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
