//! # sde-core
//!
//! The foundation of scoresde-rs (Song et al., ICLR 2021, *Score-Based Generative Modeling
//! through Stochastic Differential Equations*):
//!
//! - the [`Sde`] trait (drift and diffusion, transition kernel [`Sde::marginal_prob`],
//!   [`Sde::prior_sampling`], [`Sde::prior_logp`], [`Sde::discretize`]) and the
//!   [`VeSde`], [`VpSde`] and [`SubVpSde`] of the paper;
//! - the reverse-time SDE and the probability-flow ODE ([`ReverseSde`]);
//! - score functions ([`ScoreFn`]), the network-side [`ScoreModel`] trait and the adapter
//!   [`ScoreModelFn`] with the reference's time-label conventions ([`LabelConvention`]);
//! - exact analytic scores of Gaussian and Gaussian-mixture data ([`analytic`]), the ground
//!   truth every sampler and the likelihood are checked against;
//! - seeded noise ([`noise`]): every random draw goes through a source the caller controls.
//!
//! ```
//! use candle_core::{DType, Device, Shape};
//! use rand::SeedableRng;
//! use sde_core::{Sde, VpSde};
//!
//! let sde = VpSde::new(0.1, 20.0, 1000)?;
//! let mut rng = rand::rngs::StdRng::seed_from_u64(0);
//! let x0 = sde.prior_sampling(&Shape::from((8, 2)), &Device::Cpu, DType::F32, &mut rng)?;
//! let t = sde_core::time_tensor(0.5, 8, &Device::Cpu, DType::F32)?;
//! let (mean, std) = sde.marginal_prob(&x0, &t)?;
//! assert_eq!(mean.dims(), &[8, 2]);
//! assert_eq!(std.dims(), &[8]);
//! # Ok::<(), sde_core::Error>(())
//! ```
#![warn(missing_docs)]

pub mod analytic;
mod error;
pub mod file_bytes;
pub mod noise;
mod reverse;
mod score;
mod sde;
mod sub_vp;
mod tensor;
mod ve;
mod vp;

pub use error::{Error, Result};
pub use reverse::ReverseSde;
pub use score::{autograd_vjp, Mode, ScoreFn, ScoreModel, ScoreModelFn};
pub use sde::{standard_normal_logp, timestep_index, AncestralSde, LabelConvention, Sde};
pub use sub_vp::SubVpSde;
pub use tensor::{
    batch_size, check_float, check_time, check_time_in, constant_value, ensure_finite,
    expand_batch, from_host_f64, mul_batch, sample_numel, sum_non_batch, time_tensor, to_host_f64,
};
pub use ve::VeSde;
pub use vp::VpSde;

/// The crate README's example, compiled and run as a doc test.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
