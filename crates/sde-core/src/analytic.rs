//! Analytic oracles: exact scores and log densities of Gaussian and Gaussian-mixture data under
//! any SDE whose transition kernel is N(a(t) x(0), σ(t)² I).
//!
//! If p_0 = Σ_k w_k N(μ_k, diag(s_k²)), then p_t = Σ_k w_k N(a μ_k, diag(a² s_k² + σ²)) with
//! (a, σ) from [`Sde::marginal_coeffs`](crate::Sde::marginal_coeffs), so the score ∇ₓ log p_t
//! and log p_0 are exact. Every sampler and the likelihood of `sde-solvers` are validated
//! against these.
//!
//! - [`GaussianScore`] and [`GaussianMixtureScore`] are the **truth**: the closed forms,
//!   evaluated plainly in f64 whatever the input dtype (results in the input's dtype).
//! - [`FastMixtureScore`] is the **fast path** for samplers of low-dimensional toys: the same
//!   score in float32 through a vectorised kernel, tested against the truth (its doc states the
//!   tolerance).
//! - [`GaussianMixture`] is the data distribution itself (density, sampling, classification).

use candle_core::{Device, Tensor};

mod fast;
mod gaussian;
mod mixture;
mod mixture_score;

pub use fast::FastMixtureScore;
pub use gaussian::GaussianScore;
pub use mixture::GaussianMixture;
pub use mixture_score::GaussianMixtureScore;

/// Where the f64 truth is computed for an input on `x`'s device: that device, except Metal,
/// which has no f64 (the CPU then).
fn compute_device(x: &Tensor) -> Device {
    if x.device().is_metal() {
        Device::Cpu
    } else {
        x.device().clone()
    }
}
