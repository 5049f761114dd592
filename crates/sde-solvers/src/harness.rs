//! Verification harness: check any sampler on any SDE against closed-form truth in one call.
//!
//! - [`convergence_order`]: on Gaussian data N(μ, s² I) the probability-flow map is affine and
//!   known exactly ([`gaussian_flow_map`]); the error of a deterministic sampler against it at
//!   n, 2n, 4n, … steps gives the measured order (the slope of log error vs log steps).
//! - [`mixture_quality`]: samples of a Gaussian mixture against exact draws: energy distance,
//!   the exact-vs-exact noise floor, and the share of each mode.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use sde_core::VpSde;
//! use sde_solvers::{harness, samplers::DpmSolverPp2M, schedule::Schedule};
//! let sde = VpSde::default();
//! let x_t = Tensor::new(&[[-1.5f64], [0.2], [2.0]], &Device::Cpu)?;
//! let rep = harness::convergence_order(&sde, &DpmSolverPp2M { lower_order_final: false, ..Default::default() },
//!     &Schedule::UniformLogSnr { sampling_eps: 1e-3 }, &[16, 32, 64], 0.5, 0.3, &x_t)?;
//! assert!((rep.slope - 2.0).abs() < 0.35, "{rep:?}");
//! # Ok::<(), sde_solvers::Error>(())
//! ```

use candle_core::{DType, Device, Shape, Tensor};
use rand::SeedableRng;
use sde_core::analytic::{FastMixtureScore, GaussianMixture, GaussianScore};
use sde_core::noise::{BrownianTree, PerSampleNoise};
use sde_core::{to_host_f64, ScoreFn, Sde};

use crate::driver::Sampler;
use crate::error::{Error, Result};
use crate::samplers::{AdaptiveSampler, Point};
use crate::schedule::Schedule;
use crate::step::Step;

/// The exact probability-flow map of Gaussian data N(μ, s² I) from time t to time u: the
/// marginal at t is N(a_t μ, v_t² I) with v_t² = a_t² s² + σ_t², the flow is the monotone
/// transport between the marginals,
///
/// x_u = a_u μ + (v_u / v_t)(x_t − a_t μ).
pub fn gaussian_flow_map<S: Sde + ?Sized>(
    sde: &S,
    mean: f64,
    std: f64,
    x: &Tensor,
    t: f64,
    u: f64,
) -> Result<Tensor> {
    let (pt, pu) = (Point::at(sde, t)?, Point::at(sde, u)?);
    let v = |p: &Point| (p.alpha * p.alpha * std * std + p.sigma * p.sigma).sqrt();
    let k = v(&pu) / v(&pt);
    Ok(x.affine(k, pu.alpha * mean - k * pt.alpha * mean)?)
}

/// What [`convergence_order`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvergenceReport {
    /// Step counts.
    pub steps: Vec<usize>,
    /// Max abs error against the exact flow map at each step count.
    pub errors: Vec<f64>,
    /// NFE at each step count.
    pub nfe: Vec<usize>,
    /// The measured order: −(least-squares slope of log error vs log steps).
    pub slope: f64,
}

/// Runs the deterministic `step` over `schedule` from the same `x_t` (`[B, ...]`, at time T,
/// any float dtype; use f64 to see high orders) at each step count of `steps`, without the
/// final denoising, on Gaussian data N(`mean`, `std`² I) with its exact score
/// ([`GaussianScore`]), and compares with [`gaussian_flow_map`] at the schedule's last time.
///
/// A stochastic step (churn, η > 0) has no deterministic limit to compare with: use
/// [`mixture_quality`] for those.
#[allow(clippy::too_many_arguments)]
pub fn convergence_order<S, St>(
    sde: &S,
    step: &St,
    schedule: &Schedule,
    steps: &[usize],
    mean: f64,
    std: f64,
    x_t: &Tensor,
) -> Result<ConvergenceReport>
where
    S: Sde + ?Sized,
    St: Step<S>,
{
    if steps.len() < 2 {
        return Err(Error::InvalidParameter {
            name: "steps",
            value: steps.len() as f64,
            reason: "need at least two step counts to measure an order",
        });
    }
    let score = GaussianScore::isotropic(sde, mean, std)?;
    let mut errors = Vec::with_capacity(steps.len());
    let mut nfe = Vec::with_capacity(steps.len());
    for &n in steps {
        let sampler = Sampler::new(step, schedule.clone(), n).denoise(false);
        let grid = schedule.times(sde, n, x_t.dtype())?;
        let last = grid[grid.len() - 1];
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let out = sampler.run(sde, &score, x_t, &mut rng, |_, _, _| {})?;
        let want = gaussian_flow_map(sde, mean, std, x_t, sde.t_end(), last)?;
        let diff = to_host_f64(&(out.x.to_dtype(DType::F64)? - want.to_dtype(DType::F64)?)?)?;
        errors.push(diff.iter().fold(0.0f64, |m, d| m.max(d.abs())));
        nfe.push(out.nfe);
    }
    let (lx, ly): (Vec<f64>, Vec<f64>) = steps
        .iter()
        .zip(&errors)
        .map(|(&n, &e)| ((n as f64).ln(), e.max(f64::MIN_POSITIVE).ln()))
        .unzip();
    let k = lx.len() as f64;
    let (mx, my) = (lx.iter().sum::<f64>() / k, ly.iter().sum::<f64>() / k);
    let cov: f64 = lx.iter().zip(&ly).map(|(x, y)| (x - mx) * (y - my)).sum();
    let var: f64 = lx.iter().map(|x| (x - mx) * (x - mx)).sum();
    Ok(ConvergenceReport {
        steps: steps.to_vec(),
        errors,
        nfe,
        slope: -cov / var,
    })
}

/// Exact-vs-exact pairs averaged for the noise floor.
const FLOOR_PAIRS: usize = 3;

/// What [`mixture_quality`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct QualityReport {
    /// Energy distance between the samples and exact draws of the mixture.
    pub energy_distance: f64,
    /// Energy distance between independent exact draws of the same size and the reference draw
    /// (mean of three): the noise floor.
    pub floor: f64,
    /// Share of the samples assigned to each mode ([`GaussianMixture::classify`]).
    pub mode_shares: Vec<f64>,
    /// max_k |share_k − w_k|.
    pub max_share_error: f64,
    /// NFE of the sampler (batched score evaluations, [`Drawn::nfe`]).
    pub nfe: usize,
    /// Mean score evaluations per sample ([`Drawn::nfe_mean`]; = `nfe` on a fixed grid).
    pub nfe_mean: f64,
}

/// What a [`HarnessSampler`] drew.
#[derive(Debug, Clone)]
pub struct Drawn {
    /// The samples.
    pub x: Tensor,
    /// Batched score evaluations.
    pub nfe: usize,
    /// Mean score evaluations per sample (differs from `nfe` for per-sample step sizes).
    pub nfe_mean: f64,
}

/// A sampler the harness can run: draws samples of `shape` in float32 on the CPU from `score`,
/// all randomness derived from `seed`. Implemented for the driver ([`Sampler`], a seeded
/// `StdRng`) and for [`AdaptiveSampler`] (a [`PerSampleNoise`] prior and a [`BrownianTree`]
/// on [0, T]); implement it to check a sampler of your own with [`mixture_quality`].
pub trait HarnessSampler<S: Sde + ?Sized> {
    /// Draws the samples.
    fn draw<F: ScoreFn + ?Sized>(
        &self,
        sde: &S,
        score: &F,
        shape: &Shape,
        seed: u64,
    ) -> Result<Drawn>;
}

impl<S: Sde + ?Sized, St: Step<S>> HarnessSampler<S> for Sampler<St> {
    fn draw<F: ScoreFn + ?Sized>(
        &self,
        sde: &S,
        score: &F,
        shape: &Shape,
        seed: u64,
    ) -> Result<Drawn> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let out = self.sample(
            sde,
            score,
            shape.clone(),
            &Device::Cpu,
            DType::F32,
            &mut rng,
        )?;
        Ok(Drawn {
            x: out.x,
            nfe: out.nfe,
            nfe_mean: out.nfe as f64,
        })
    }
}

impl<S: Sde + ?Sized> HarnessSampler<S> for AdaptiveSampler {
    fn draw<F: ScoreFn + ?Sized>(
        &self,
        sde: &S,
        score: &F,
        shape: &Shape,
        seed: u64,
    ) -> Result<Drawn> {
        let tree = BrownianTree::new(seed ^ 0xB7_0000_0001, 0.0, sde.t_end())?;
        let mut prior = PerSampleNoise::new(seed);
        let out = self.sample(
            sde,
            score,
            shape.clone(),
            &Device::Cpu,
            DType::F32,
            &mut prior,
            &tree,
        )?;
        Ok(Drawn {
            nfe_mean: out.mean_nfe(),
            x: out.x,
            nfe: out.nfe,
        })
    }
}

/// Draws `n` samples with `sampler` (the driver, [`AdaptiveSampler`], or any
/// [`HarnessSampler`]) on `sde` from the exact mixture score
/// (its float32 form [`FastMixtureScore`], within 1e-4 of the f64 truth), seeded by `seed`, and compares them with exact draws of the
/// mixture: energy distance (against `n` exact draws), the exact-vs-exact floor, mode shares.
pub fn mixture_quality<S, Smp>(
    sde: &S,
    sampler: &Smp,
    mixture: &GaussianMixture,
    n: usize,
    seed: u64,
) -> Result<QualityReport>
where
    S: Sde + ?Sized,
    Smp: HarnessSampler<S> + ?Sized,
{
    let score = FastMixtureScore::new(sde, mixture.clone());
    let shape = Shape::from((n, mixture.dim()));
    let dev = Device::Cpu;
    let out = sampler.draw(sde, &score, &shape, seed)?;
    let mut r1 = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed_0001);
    let exact = mixture.sample(&shape, &dev, DType::F64, &mut r1)?;
    let samples = out.x.to_dtype(DType::F64)?;
    let ed = energy_distance(&samples, &exact)?;
    // the floor: mean over three independent exact draws against the same reference draw
    let mut floor = 0.0;
    for k in 0..FLOOR_PAIRS {
        let mut r = rand::rngs::StdRng::seed_from_u64(seed ^ (0x5eed_0002 + k as u64));
        let other = mixture.sample(&shape, &dev, DType::F64, &mut r)?;
        floor += energy_distance(&other, &exact)? / FLOOR_PAIRS as f64;
    }
    let classes = mixture.classify(&samples)?;
    let mut counts = vec![0usize; mixture.n_components()];
    for c in classes {
        counts[c] += 1;
    }
    let mode_shares: Vec<f64> = counts.iter().map(|&c| c as f64 / n as f64).collect();
    let max_share_error = mode_shares
        .iter()
        .zip(mixture.weights())
        .fold(0.0f64, |m, (s, w)| m.max((s - w).abs()));
    Ok(QualityReport {
        energy_distance: ed,
        floor,
        mode_shares,
        max_share_error,
        nfe: out.nfe,
        nfe_mean: out.nfe_mean,
    })
}

/// Energy distance 2 E‖X − Y‖ − E‖X − X′‖ − E‖Y − Y′‖ between the rows of `a: [n, ...]` and
/// `b: [m, ...]` (flattened per sample), as the V-statistic (means over all pairs, i = j
/// included): ≥ 0, zero iff the empirical distributions agree; between two independent exact
/// draws of n points it is O(1/n) > 0, the floor [`mixture_quality`] reports.
pub fn energy_distance(a: &Tensor, b: &Tensor) -> Result<f64> {
    let rows = |x: &Tensor| -> Result<(Vec<f64>, usize, usize)> {
        let n = x.dim(0)?;
        let d = sde_core::sample_numel(x)?;
        Ok((to_host_f64(x)?, n, d))
    };
    let (va, n, d) = rows(a)?;
    let (vb, m, db) = rows(b)?;
    if d != db || n < 2 || m < 2 {
        return Err(Error::ShapeMismatch {
            what: "energy_distance inputs",
            expected: "two batches of >= 2 samples of the same size".into(),
            got: format!("{:?} and {:?}", a.dims(), b.dims()),
        });
    }
    let dist = |x: &[f64], y: &[f64]| -> f64 {
        x.iter()
            .zip(y)
            .map(|(p, q)| (p - q) * (p - q))
            .sum::<f64>()
            .sqrt()
    };
    let mean_cross = {
        let mut s = 0.0;
        for i in 0..n {
            for j in 0..m {
                s += dist(&va[i * d..(i + 1) * d], &vb[j * d..(j + 1) * d]);
            }
        }
        s / (n * m) as f64
    };
    let within = |v: &[f64], k: usize| -> f64 {
        let mut s = 0.0;
        for i in 0..k {
            for j in i + 1..k {
                s += dist(&v[i * d..(i + 1) * d], &v[j * d..(j + 1) * d]);
            }
        }
        2.0 * s / (k * k) as f64
    };
    Ok(2.0 * mean_cross - within(&va, n) - within(&vb, m))
}
