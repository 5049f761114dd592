//! Importance sampling of the training time for likelihood weighting (Song, Durkan, Murray &
//! Ermon 2021, "Maximum likelihood training of score-based diffusion models", §5).
//!
//! With λ(t) = g(t)² the continuous DSM objective is
//! J = 1/(T − ε) ∫_ε^T g(t)² ℓ(t) dt,  ℓ(t) = E R(‖s_θ + z/σ(t)‖²).
//! Near t = ε, g²/σ² blows up (≈ 1/t for VP), so drawing t uniformly gives a high-variance
//! estimate. Drawing t from q(t) ∝ g(t)²/σ(t)² instead and weighting each sample by
//! w(t) = 1/((T − ε) q(t)) keeps the estimate unbiased,
//! E_q[w g² ℓ] = 1/(T − ε) ∫ g² ℓ dt = J,
//! while the per-sample term w g² ℓ = Z/(T − ε) · σ² ℓ (Z = ∫ g²/σ² dt) has the bounded size of
//! the σ²-weighted loss.
//!
//! **Sampling scheme.** q has a closed-form CDF only for some SDEs (VP: ∝ log(e^{B(t)} − 1) with
//! B(t) = ∫_0^t β), so [`ImportanceSampler`] works for any [`Sde`]: it evaluates
//! f(t) = g(t)²/σ(t)² on a grid that is geometric in t (so it resolves the 1/t singularity at ε),
//! integrates it with the trapezoid rule into a normalised CDF F_k, and samples by inverting the
//! piecewise-linear CDF: for u ~ U(0, 1) with F_k ≤ u < F_{k+1},
//! t = t_k + (u − F_k)/(F_{k+1} − F_k) · (t_{k+1} − t_k).
//! The density actually sampled is piecewise constant, q_k = (F_{k+1} − F_k)/(t_{k+1} − t_k), and
//! the weight uses exactly this q, so the estimator is unbiased whatever the grid size (the grid
//! only decides how much variance is removed).

use candle_core::{DType, Device, Tensor};
use sde_core::{from_host_f64, to_host_f64, Sde};

use crate::error::{check_param, Error, Result};

/// Inverse-CDF sampler of t ∈ [ε, T] with density q(t) ∝ g(t)²/σ(t)² (piecewise constant on a
/// geometric grid), and the importance weight w(t) = 1/((T − ε) q(t)).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use sde_train::ImportanceSampler;
/// let sde = sde_core::VpSde::default();
/// let sampler = ImportanceSampler::new(&sde, 1e-5, 4096)?;
/// let u = Tensor::new(&[0.1f32, 0.5, 0.9], &Device::Cpu)?;
/// let (t, w) = sampler.sample_from_uniform(&u)?;
/// let t = t.to_vec1::<f32>()?;
/// assert!(t[0] < t[1] && t[1] < t[2]); // the inverse CDF is increasing
/// # Ok::<(), sde_train::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ImportanceSampler {
    eps: f64,
    t_end: f64,
    grid: Vec<f64>,
    cdf: Vec<f64>,
    normalizer: f64,
}

impl ImportanceSampler {
    /// Tabulates q on `n_grid` cells (≥ 2) between `eps` (> 0) and T, geometric in t.
    ///
    /// Fails if g²/σ² is not finite and non-negative on the grid, or integrates to zero.
    pub fn new<S: Sde + ?Sized>(sde: &S, eps: f64, n_grid: usize) -> Result<Self> {
        let t_end = sde.t_end();
        check_param("eps", eps, eps > 0.0 && eps < t_end, "must lie in (0, T)")?;
        check_param("n_grid", n_grid as f64, n_grid >= 2, "must be at least 2")?;
        let ratio = (t_end / eps).ln();
        let mut grid: Vec<f64> = (0..=n_grid)
            .map(|k| eps * (ratio * k as f64 / n_grid as f64).exp())
            .collect();
        if let Some(last) = grid.last_mut() {
            *last = t_end;
        }
        let t = from_host_f64(grid.clone(), &Device::Cpu, DType::F64)?;
        let probe = Tensor::zeros((grid.len(), 1), DType::F64, &Device::Cpu)?;
        let g = to_host_f64(&sde.sde(&probe, &t)?.1)?;
        let std = to_host_f64(&sde.marginal_coeffs(&t)?.1)?;
        let f: Vec<f64> = g.iter().zip(&std).map(|(g, s)| g * g / (s * s)).collect();
        if let Some((k, &bad)) = f
            .iter()
            .enumerate()
            .find(|(_, v)| !(v.is_finite() && **v >= 0.0))
        {
            return Err(Error::InvalidParameter {
                name: "importance_sampling",
                value: bad,
                reason: if k == 0 {
                    "g(t)²/σ(t)² must be finite and ≥ 0 on [eps, T] (is σ(eps) = 0?)"
                } else {
                    "g(t)²/σ(t)² must be finite and ≥ 0 on [eps, T]"
                },
            });
        }
        let mut cdf = Vec::with_capacity(grid.len());
        let mut acc = 0.0;
        cdf.push(0.0);
        for k in 0..n_grid {
            acc += 0.5 * (f[k] + f[k + 1]) * (grid[k + 1] - grid[k]);
            cdf.push(acc);
        }
        let normalizer = acc;
        if !(normalizer.is_finite() && normalizer > 0.0) {
            return Err(Error::InvalidParameter {
                name: "importance_sampling",
                value: normalizer,
                reason: "∫ g²/σ² dt over [eps, T] must be finite and > 0",
            });
        }
        for c in &mut cdf {
            *c /= normalizer;
        }
        Ok(Self {
            eps,
            t_end,
            grid,
            cdf,
            normalizer,
        })
    }

    /// Z = ∫_ε^T g(t)²/σ(t)² dt (trapezoid rule on the grid).
    pub fn normalizer(&self) -> f64 {
        self.normalizer
    }

    /// The grid t_0 = ε < … < t_K = T.
    pub fn grid(&self) -> &[f64] {
        &self.grid
    }

    /// The normalised CDF F_k at the grid points (F_0 = 0, F_K = 1).
    pub fn cdf(&self) -> &[f64] {
        &self.cdf
    }

    /// Cell index k with t_k ≤ t < t_{k+1}, clamped to the grid.
    fn cell_of_time(&self, t: f64) -> usize {
        let k = self.grid.partition_point(|&g| g <= t);
        k.saturating_sub(1).min(self.grid.len() - 2)
    }

    /// The sampled density q(t) (piecewise constant).
    pub fn density(&self, t: f64) -> f64 {
        let k = self.cell_of_time(t);
        (self.cdf[k + 1] - self.cdf[k]) / (self.grid[k + 1] - self.grid[k])
    }

    /// One host draw: (t, w) for u ∈ [0, 1].
    pub fn sample_one(&self, u: f64) -> (f64, f64) {
        let u = u.clamp(0.0, 1.0);
        let k = self
            .cdf
            .partition_point(|&c| c <= u)
            .saturating_sub(1)
            .min(self.grid.len() - 2);
        let (f0, f1) = (self.cdf[k], self.cdf[k + 1]);
        let (t0, t1) = (self.grid[k], self.grid[k + 1]);
        let frac = if f1 > f0 { (u - f0) / (f1 - f0) } else { 0.0 };
        let t = (t0 + frac * (t1 - t0)).clamp(self.eps, self.t_end);
        let q = (f1 - f0) / (t1 - t0);
        (t, 1.0 / ((self.t_end - self.eps) * q))
    }

    /// Times `t: [B]` (dtype and device of `u`) and weights `w: [B]` for uniform draws `u: [B]`.
    pub fn sample_from_uniform(&self, u: &Tensor) -> Result<(Tensor, Tensor)> {
        let host = to_host_f64(u)?;
        if let Some(&bad) = host.iter().find(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                what: format!("uniform draw u = {bad}"),
            });
        }
        let (t, w): (Vec<f64>, Vec<f64>) = host.iter().map(|&u| self.sample_one(u)).unzip();
        Ok((
            from_host_f64(t, u.device(), u.dtype())?,
            from_host_f64(w, u.device(), u.dtype())?,
        ))
    }
}
