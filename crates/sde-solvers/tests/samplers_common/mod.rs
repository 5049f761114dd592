//! Shared fixtures of the sampler tests: a user-defined cosine VP SDE (only the required
//! methods, so λ(t) and its inverse come from the trait's numeric defaults) and a wrapper that
//! hides the built-in SDEs' closed forms.
#![allow(dead_code)]

use candle_core::{DType, Device, Shape, Tensor};
use sde_core::{mul_batch, noise::NoiseSource, Result, Sde};

/// Cosine-schedule VP SDE (Nichol & Dhariwal 2021), as in the `Sde` trait's doc.
#[derive(Debug, Clone)]
pub struct CosineVp {
    pub s: f64,
    pub n: usize,
}

impl CosineVp {
    fn phase(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.affine(
            std::f64::consts::FRAC_PI_2 / (1.0 + self.s),
            std::f64::consts::FRAC_PI_2 * self.s / (1.0 + self.s),
        )?)
    }
}

impl Sde for CosineVp {
    /// T = 0.9946 as DPM-Solver's cosine schedule: at T = 1, α = 0 and λ = −∞.
    fn t_end(&self) -> f64 {
        0.9946
    }
    fn n(&self) -> usize {
        self.n
    }
    fn sde(&self, x: &Tensor, t: &Tensor) -> Result<(Tensor, Tensor)> {
        let phase = self.phase(t)?;
        let beta =
            (phase.sin()? / phase.cos()?)?.affine(std::f64::consts::PI / (1.0 + self.s), 0.0)?;
        Ok((mul_batch(&beta.affine(-0.5, 0.0)?, x)?, beta.sqrt()?))
    }
    fn marginal_prob(&self, x0: &Tensor, t: &Tensor) -> Result<(Tensor, Tensor)> {
        let c0 = (std::f64::consts::FRAC_PI_2 * self.s / (1.0 + self.s)).cos();
        let mean_coeff = self.phase(t)?.cos()?.affine(1.0 / c0, 0.0)?;
        let std = (1.0 - mean_coeff.sqr()?)?.sqrt()?;
        Ok((mul_batch(&mean_coeff, x0)?, std))
    }
    fn prior_sampling<N: NoiseSource + ?Sized>(
        &self,
        shape: &Shape,
        dev: &Device,
        dtype: DType,
        noise: &mut N,
    ) -> Result<Tensor> {
        noise.randn(shape, dev, dtype)
    }
    fn prior_logp(&self, z: &Tensor) -> Result<Tensor> {
        sde_core::standard_normal_logp(z, 1.0)
    }
}

/// The cosine SDE of the paper (s = 0.008).
pub fn cosine() -> CosineVp {
    CosineVp { s: 0.008, n: 1000 }
}

/// Forwards the required methods and `marginal_coeffs` only: λ(t) and its inverse use the
/// trait's numeric defaults.
pub struct Generic<S>(pub S);

impl<S: Sde> Sde for Generic<S> {
    fn n(&self) -> usize {
        self.0.n()
    }
    fn sde(&self, x: &Tensor, t: &Tensor) -> Result<(Tensor, Tensor)> {
        self.0.sde(x, t)
    }
    fn marginal_prob(&self, x0: &Tensor, t: &Tensor) -> Result<(Tensor, Tensor)> {
        self.0.marginal_prob(x0, t)
    }
    fn prior_sampling<N: NoiseSource + ?Sized>(
        &self,
        shape: &Shape,
        dev: &Device,
        dtype: DType,
        noise: &mut N,
    ) -> Result<Tensor> {
        self.0.prior_sampling(shape, dev, dtype, noise)
    }
    fn prior_logp(&self, z: &Tensor) -> Result<Tensor> {
        self.0.prior_logp(z)
    }
    fn marginal_coeffs(&self, t: &Tensor) -> Result<(Tensor, Tensor)> {
        self.0.marginal_coeffs(t)
    }
}
