//! Exact likelihoods through the probability-flow ODE (`likelihood.get_likelihood_fn`), with
//! Hutchinson–Skilling or exact divergences, and bits/dim conversions.
//!
//! Sampling, encoding and the likelihood together (the crate README's example):
//! ```
//! use candle_core::{DType, Device, Shape};
//! use rand::SeedableRng;
//! use sde_core::{analytic::GaussianScore, VpSde};
//! use sde_solvers::likelihood::{DataRange, DivergenceEstimator, Likelihood, LikelihoodOptions};
//! use sde_solvers::ode::{ErrorNorm, OdeMethod, Rk45Options};
//! use sde_solvers::ode_sampler::{OdeSampler, OdeSamplerOptions};
//!
//! let sde = VpSde::default();
//! let score = GaussianScore::isotropic(&sde, 0.5, 0.7)?; // exact score of N(0.5, 0.7² I) data
//! let mut rng = rand::rngs::StdRng::seed_from_u64(0);
//!
//! // Sample along the probability-flow ODE (RK45, rtol = atol = 1e-5), with the denoising step.
//! let sampler = OdeSampler::new(&sde, &score, OdeSamplerOptions { denoise: true, ..Default::default() })?;
//! let out = sampler.sample(&Shape::from((64, 2)), &Device::Cpu, DType::F32, &mut rng)?;
//! println!("{} samples, {} drift evaluations", out.x.dim(0)?, out.nfe);
//!
//! // Latent codes and back.
//! let z = sampler.encode(&out.x)?.x;
//! let x_again = sampler.decode(&z)?.x;
//! let round_trip = (x_again - &out.x)?.abs()?.max_all()?.to_scalar::<f32>()?;
//! assert!(round_trip < 1e-3);
//!
//! // Log-likelihood with per-sample step control and 4 Rademacher probes.
//! let opts = LikelihoodOptions {
//!     method: OdeMethod::Rk45(Rk45Options { error_norm: ErrorNorm::PerSample, ..Default::default() }),
//!     estimator: DivergenceEstimator::Hutchinson {
//!         probe: sde_solvers::likelihood::HutchinsonProbe::Rademacher,
//!         n_probes: 4,
//!     },
//!     ..Default::default()
//! };
//! let lik = Likelihood::new(&sde, &score, opts)?;
//! let res = lik.log_likelihood(&out.x, &mut rng)?;
//! let bpd = res.bits_per_dim(8, (0.0, 1.0))?;           // 8-bit data in [0, 1]
//! let bpd_ref = res.reference_bits_per_dim(DataRange::ZeroOne)?; // the reference's formula
//! let same = (bpd - bpd_ref)?.abs()?.max_all()?.to_scalar::<f64>()?;
//! assert!(same < 1e-12);
//! println!("log p = {}, ± {:?}", res.log_p, res.std_err);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use candle_core::{DType, Tensor};
use sde_core::noise::NoiseSource;
use sde_core::{autograd_vjp, mul_batch, ScoreFn, Sde};

use crate::error::{Error, Result};
use crate::ode::{OdeMethod, OdeRhs};

/// Distribution of the Hutchinson–Skilling probes ε (`hutchinson_type`): any ε with
/// 𝔼 ε = 0, 𝔼 ε εᵀ = I gives an unbiased trace estimate tr(J) = 𝔼 εᵀ J ε.
#[doc(alias = "hutchinson_type")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HutchinsonProbe {
    /// ε ~ N(0, I) (`'Gaussian'`).
    Gaussian,
    /// ε_i = ±1 with probability ½ (`'Rademacher'`, the reference's default; lower variance).
    #[default]
    Rademacher,
}

/// How div f̃ = tr(∂f̃/∂x) is evaluated along the trajectory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DivergenceEstimator {
    /// Hutchinson–Skilling: div f̃ ≈ (1/K) Σ_k ε_kᵀ (∂f̃/∂x) ε_k with `n_probes` = K probes,
    /// each drawn once and kept fixed along the whole trajectory (as the reference), one
    /// vector–Jacobian product per probe and evaluation. The K estimates of log p are integrated
    /// side by side in one ODE and averaged; their spread gives a standard error.
    Hutchinson {
        /// Probe distribution.
        probe: HutchinsonProbe,
        /// Number K ≥ 1 of probes per sample.
        n_probes: usize,
    },
    /// The exact trace Σ_i e_iᵀ (∂f̃/∂x) e_i: D vector–Jacobian products per evaluation (D the
    /// number of elements of one sample). For low-dimensional data.
    Exact,
}

impl Default for DivergenceEstimator {
    fn default() -> Self {
        DivergenceEstimator::Hutchinson {
            probe: HutchinsonProbe::Rademacher,
            n_probes: 1,
        }
    }
}

/// Options of [`Likelihood`], mirroring `get_likelihood_fn(sde, inverse_scaler,
/// hutchinson_type, rtol, atol, method, eps)`. Defaults: RK45 with `rtol = atol = 1e-5` and the
/// scipy-compatible batch error norm, `sampling_eps = 1e-5`, one Rademacher probe, float64
/// solver state (the drift is evaluated in the data's dtype, as the reference does).
#[derive(Debug, Clone, PartialEq)]
pub struct LikelihoodOptions {
    /// The integrator.
    pub method: OdeMethod,
    /// The ODE runs from t = `sampling_eps` (`eps`) to T, so the result is log p_ε(x).
    #[doc(alias = "eps")]
    pub sampling_eps: f64,
    /// Divergence estimator.
    pub estimator: DivergenceEstimator,
    /// dtype of the solver state (x and the log-density increments).
    pub solver_dtype: DType,
}

impl Default for LikelihoodOptions {
    fn default() -> Self {
        Self {
            method: OdeMethod::default(),
            sampling_eps: 1e-5,
            estimator: DivergenceEstimator::default(),
            solver_dtype: DType::F64,
        }
    }
}

/// What [`Likelihood`] returns for a batch of B data points.
#[derive(Debug, Clone)]
pub struct LikelihoodOutput {
    /// log p_ε(x) per sample in nats, `[B]` (mean over the K probes), in the solver dtype.
    pub log_p: Tensor,
    /// The K estimates per sample, `[B, K]` (K = 1 for the exact trace).
    pub log_p_per_probe: Tensor,
    /// Standard error of `log_p` over the probes, s_K/√K with the sample std s_K, `[B]`;
    /// `None` for the exact trace or a single probe.
    pub std_err: Option<Tensor>,
    /// log p_T(z) per sample, `[B]`.
    pub prior_logp: Tensor,
    /// ∫_ε^T div f̃(x(t), t) dt per sample and probe, `[B, K]`.
    pub delta_logp: Tensor,
    /// The latent z = x(T), in the data's dtype and shape.
    pub z: Tensor,
    /// Drift evaluations of the ODE (scipy's `nfev`); each one costs K vector–Jacobian products
    /// (D for the exact trace).
    pub nfe: usize,
    /// Accepted steps (summed over samples in per-sample mode).
    pub n_accepted: usize,
    /// Rejected step attempts.
    pub n_rejected: usize,
    dim: usize,
}

impl LikelihoodOutput {
    /// D, the number of elements of one data point.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// bits/dim of data quantised to `bit_depth` bits over `data_range` (see [`bits_per_dim`]).
    pub fn bits_per_dim(&self, bit_depth: u32, data_range: (f64, f64)) -> Result<Tensor> {
        bits_per_dim(&self.log_p, self.dim, bit_depth, data_range)
    }

    /// The reference's bits/dim, −log p/(D ln 2) + 7 − inverse_scaler(−1), for data the
    /// likelihood saw in `data_range` (see [`reference_bits_per_dim`]).
    pub fn reference_bits_per_dim(&self, data_range: DataRange) -> Result<Tensor> {
        reference_bits_per_dim(&self.log_p, self.dim, data_range)
    }
}

/// Log-likelihoods by the instantaneous change of variables along the probability-flow ODE
/// (Song et al. 2021, App. D.2; Chen et al. 2018; Grathwohl et al. 2019):
///
/// log p_ε(x) = log p_T(z) + ∫_ε^T div f̃(x(t), t) dt,  dx/dt = f̃(x, t) = f(x, t) − ½ g(t)² s(x, t),
///
/// integrated from x(ε) = x to z = x(T) as one ODE augmented with the divergence integral.
/// div f̃ = div f − ½ g² div s uses the score's vector–Jacobian product
/// ([`ScoreFn::score_with_vjp`]: candle autograd by default, closed form for the analytic
/// oracles) and the drift's own (candle autograd on [`Sde::sde`]). Mirrors
/// `get_likelihood_fn`; convert to bits/dim with [`LikelihoodOutput::bits_per_dim`].
///
/// ```
/// use candle_core::{DType, Device, Shape};
/// use rand::SeedableRng;
/// use sde_core::{analytic::GaussianScore, VpSde};
/// use sde_solvers::likelihood::{DivergenceEstimator, Likelihood, LikelihoodOptions};
///
/// let sde = VpSde::default();
/// let oracle = GaussianScore::isotropic(&sde, 0.5, 0.7)?; // data N(0.5, 0.7² I)
/// let opts = LikelihoodOptions { estimator: DivergenceEstimator::Exact, ..Default::default() };
/// let lik = Likelihood::new(&sde, &oracle, opts)?;
/// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
/// let x = oracle.sample(&Shape::from((4, 2)), &Device::Cpu, DType::F32, &mut rng)?;
/// let out = lik.log_likelihood(&x, &mut rng)?;
/// // log p_ε(x) = log p_T(z) + ∫ div f̃ dt holds to the solver's tolerance with the exact p_T;
/// // `out.log_p` uses the SDE's prior N(0, I) in place of p_T.
/// let (t_eps, t_1) = (1e-5, 1.0);
/// let time = |t| sde_core::time_tensor(t, 4, &Device::Cpu, DType::F64);
/// let exact = oracle.log_prob(&x.to_dtype(DType::F64)?, &time(t_eps)?)?;
/// let log_p_t = oracle.log_prob(&out.z.to_dtype(DType::F64)?, &time(t_1)?)?;
/// let ode = (out.delta_logp.squeeze(1)? + log_p_t)?;
/// let err = (ode - &exact)?.abs()?.max_all()?.to_scalar::<f64>()?;
/// assert!(err < 1e-3, "{err}");
/// let prior_gap = (&out.log_p - &exact)?.abs()?.max_all()?.to_scalar::<f64>()?;
/// assert!(prior_gap < 0.05, "{prior_gap}");
/// let bpd = out.bits_per_dim(8, (0.0, 1.0))?; // 8-bit data in [0, 1]
/// # Ok::<(), sde_solvers::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Likelihood<'a, S: ?Sized, F: ?Sized> {
    sde: &'a S,
    score: &'a F,
    opts: LikelihoodOptions,
}

/// The augmented right-hand side d/dt [x, Δ_1..Δ_K] = [f̃(x, t), ε_kᵀ ∂f̃/∂x ε_k].
struct AugmentedRhs<'a, S: ?Sized, F: ?Sized> {
    sde: &'a S,
    score: &'a F,
    /// Data shape `[B, ...]` and dtype: the drift is evaluated there.
    shape: Vec<usize>,
    dtype: DType,
    dim: usize,
    /// The probes (Hutchinson) or the basis vectors e_i (exact trace), in the data dtype.
    probes: Vec<Tensor>,
    /// Exact trace: sum all D products into one channel.
    exact: bool,
}

impl<S: Sde + ?Sized, F: ScoreFn + ?Sized> AugmentedRhs<'_, S, F> {
    /// (f̃(x, t), εᵀ ∂f̃/∂x ε per sample).
    fn drift_and_div(&self, x: &Tensor, t: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (score, vjp_s) = self.score.score_with_vjp(x, t, v)?;
        let mut g = None;
        let (f, vjp_f) = autograd_vjp(
            |xv| {
                let (f, gg) = self.sde.sde(xv, t)?;
                g = Some(gg);
                Ok(f)
            },
            x,
            v,
        )?;
        let g = g.ok_or_else(|| Error::Unsupported("drift closure was not called".into()))?;
        let half_g2 = g.sqr()?.affine(-0.5, 0.0)?;
        let drift = (f + mul_batch(&half_g2, &score)?)?;
        let vjp = (vjp_f + mul_batch(&half_g2, &vjp_s.to_dtype(x.dtype())?)?)?;
        let div = crate::ode::row_sums(&(vjp * v)?.contiguous()?)?;
        Ok((drift, div))
    }
}

impl<S: Sde + ?Sized, F: ScoreFn + ?Sized> OdeRhs for AugmentedRhs<'_, S, F> {
    fn eval(&self, state: &Tensor, t: &Tensor) -> Result<Tensor> {
        self.eval_with(state, t, None)
    }

    fn eval_rows(&self, state: &Tensor, t: &Tensor, rows: &Tensor) -> Result<Tensor> {
        self.eval_with(state, t, Some(rows))
    }

    /// The score and drift act sample by sample; the probes follow their samples.
    fn supports_rows(&self) -> bool {
        true
    }
}

impl<S: Sde + ?Sized, F: ScoreFn + ?Sized> AugmentedRhs<'_, S, F> {
    fn eval_with(&self, state: &Tensor, t: &Tensor, rows: Option<&Tensor>) -> Result<Tensor> {
        let sdt = state.dtype();
        let b = state.dim(0)?;
        // The state may hold a subset of the batch when the solver works per sample.
        let mut shape = self.shape.clone();
        shape[0] = b;
        let x = state
            .narrow(1, 0, self.dim)?
            .reshape(shape)?
            .to_dtype(self.dtype)?;
        let t = t.to_dtype(self.dtype)?;
        let mut drift = None;
        let mut divs = Vec::with_capacity(self.probes.len());
        for v in &self.probes {
            let selected;
            let v = match rows {
                Some(r) if r.dim(0)? != v.dim(0)? => {
                    selected = v.index_select(r, 0)?;
                    &selected
                }
                _ => v,
            };
            let (d, div) = self.drift_and_div(&x, &t, v)?;
            if drift.is_none() {
                drift = Some(d);
            }
            divs.push(div.to_dtype(sdt)?.unsqueeze(1)?);
        }
        let drift = drift.ok_or_else(|| Error::Unsupported("no probes".into()))?;
        let div = Tensor::cat(&divs, 1)?;
        let div = if self.exact { div.sum_keepdim(1)? } else { div };
        Ok(Tensor::cat(
            &[drift.flatten_from(1)?.to_dtype(sdt)?, div],
            1,
        )?)
    }
}

impl<'a, S: Sde + ?Sized, F: ScoreFn + ?Sized> Likelihood<'a, S, F> {
    /// The likelihood of `sde` with score `score`; checks `0 < sampling_eps < T`, K ≥ 1 and
    /// the solver options (`get_likelihood_fn`).
    #[doc(alias = "get_likelihood_fn")]
    pub fn new(sde: &'a S, score: &'a F, opts: LikelihoodOptions) -> Result<Self> {
        if !(opts.sampling_eps > 0.0 && opts.sampling_eps < sde.t_end()) {
            return Err(Error::InvalidParameter {
                name: "sampling_eps",
                value: opts.sampling_eps,
                reason: "must lie in (0, T)",
            });
        }
        if let DivergenceEstimator::Hutchinson { n_probes: 0, .. } = opts.estimator {
            return Err(Error::InvalidParameter {
                name: "n_probes",
                value: 0.0,
                reason: "must be at least 1",
            });
        }
        if !opts.solver_dtype.is_float() {
            return Err(Error::Unsupported(format!(
                "solver_dtype must be a float dtype, got {:?}",
                opts.solver_dtype
            )));
        }
        opts.method.validate()?;
        Ok(Self { sde, score, opts })
    }

    /// The options in use.
    pub fn options(&self) -> &LikelihoodOptions {
        &self.opts
    }

    /// log p_ε(x) for `data: [B, ...]` (float, rank ≥ 2, at least one element per sample).
    /// Hutchinson probes are drawn through `noise` (K draws of the data's shape, in order); the
    /// exact trace draws nothing. An empty batch (`B = 0`) gives empty results with no
    /// evaluation and no draw.
    pub fn log_likelihood<N: NoiseSource + ?Sized>(
        &self,
        data: &Tensor,
        noise: &mut N,
    ) -> Result<LikelihoodOutput> {
        check_data("Likelihood::log_likelihood", data)?;
        if data.dim(0)? == 0 {
            let k = match self.opts.estimator {
                DivergenceEstimator::Hutchinson { n_probes, .. } => n_probes,
                DivergenceEstimator::Exact => 1,
            };
            return self.empty(data, k);
        }
        match self.opts.estimator {
            DivergenceEstimator::Hutchinson { probe, n_probes } => {
                let mut probes = Vec::with_capacity(n_probes);
                for _ in 0..n_probes {
                    probes.push(match probe {
                        HutchinsonProbe::Gaussian => {
                            noise.randn(data.shape(), data.device(), data.dtype())?
                        }
                        HutchinsonProbe::Rademacher => {
                            noise.rademacher(data.shape(), data.device(), data.dtype())?
                        }
                    });
                }
                self.run(data, probes, false)
            }
            DivergenceEstimator::Exact => {
                let dim = sde_core::sample_numel(data)?;
                let mut basis = Vec::with_capacity(dim);
                for i in 0..dim {
                    let mut e = vec![0f32; dim];
                    e[i] = 1.0;
                    let mut shape = data.dims().to_vec();
                    shape[0] = 1;
                    let e = Tensor::from_vec(e, shape, data.device())?
                        .to_dtype(data.dtype())?
                        .broadcast_as(data.shape())?
                        .contiguous()?;
                    basis.push(e);
                }
                self.run(data, basis, true)
            }
        }
    }

    /// log p_ε(x) with given Hutchinson probes (each of `data`'s shape), e.g. to replay the
    /// reference's `epsilon`: the estimator option is ignored, K = `probes.len()`.
    pub fn log_likelihood_with_probes(
        &self,
        data: &Tensor,
        probes: &[Tensor],
    ) -> Result<LikelihoodOutput> {
        check_data("Likelihood::log_likelihood_with_probes", data)?;
        if probes.is_empty() {
            return Err(Error::InvalidParameter {
                name: "n_probes",
                value: 0.0,
                reason: "must be at least 1",
            });
        }
        let mut ps = Vec::with_capacity(probes.len());
        for p in probes {
            if p.shape() != data.shape() {
                return Err(Error::ShapeMismatch {
                    what: "Hutchinson probe",
                    expected: format!("{:?}", data.dims()),
                    got: format!("{:?}", p.dims()),
                });
            }
            ps.push(p.to_dtype(data.dtype())?.to_device(data.device())?);
        }
        if data.dim(0)? == 0 {
            return self.empty(data, ps.len());
        }
        self.run(data, ps, false)
    }

    /// The result for an empty batch: `[0]` and `[0, K]` tensors, no evaluation.
    fn empty(&self, data: &Tensor, k: usize) -> Result<LikelihoodOutput> {
        let (sdt, dev) = (self.opts.solver_dtype, data.device());
        let per_probe = Tensor::zeros((0, k), sdt, dev)?;
        Ok(LikelihoodOutput {
            log_p: Tensor::zeros(0, sdt, dev)?,
            log_p_per_probe: per_probe.clone(),
            std_err: if k >= 2 {
                Some(Tensor::zeros(0, sdt, dev)?)
            } else {
                None
            },
            prior_logp: Tensor::zeros(0, sdt, dev)?,
            delta_logp: per_probe,
            z: data.clone(),
            nfe: 0,
            n_accepted: 0,
            n_rejected: 0,
            dim: sde_core::sample_numel(data)?,
        })
    }

    fn run(&self, data: &Tensor, probes: Vec<Tensor>, exact: bool) -> Result<LikelihoodOutput> {
        let dtype = data.dtype();
        let b = data.dim(0)?;
        let dim = sde_core::sample_numel(data)?;
        let k = if exact { 1 } else { probes.len() };
        let sdt = self.opts.solver_dtype;
        let rhs = AugmentedRhs {
            sde: self.sde,
            score: self.score,
            shape: data.dims().to_vec(),
            dtype,
            dim,
            probes,
            exact,
        };
        let init = Tensor::cat(
            &[
                data.flatten_from(1)?.to_dtype(sdt)?,
                Tensor::zeros((b, k), sdt, data.device())?,
            ],
            1,
        )?;
        let sol = self
            .opts
            .method
            .solve(&rhs, &init, self.opts.sampling_eps, self.sde.t_end())?;
        let z_s = sol.x.narrow(1, 0, dim)?.reshape(data.shape())?;
        let delta_logp = sol.x.narrow(1, dim, k)?.contiguous()?;
        let prior_logp = self.sde.prior_logp(&z_s)?.to_dtype(sdt)?;
        let per_probe = delta_logp.broadcast_add(&prior_logp.unsqueeze(1)?)?;
        let log_p = per_probe.mean(1)?;
        let std_err = if k >= 2 {
            let centred = per_probe.broadcast_sub(&log_p.unsqueeze(1)?)?;
            let var = centred.sqr()?.sum(1)?.affine(1.0 / (k - 1) as f64, 0.0)?;
            Some(var.affine(1.0 / k as f64, 0.0)?.sqrt()?)
        } else {
            None
        };
        sde_core::ensure_finite(&log_p, String::new).map_err(|_| Error::NonFinite {
            what: "log-likelihood".into(),
            step: sol.n_accepted,
            t: self.sde.t_end(),
        })?;
        Ok(LikelihoodOutput {
            log_p,
            log_p_per_probe: per_probe,
            std_err,
            prior_logp,
            delta_logp,
            z: z_s.to_dtype(dtype)?,
            nfe: sol.nfe,
            n_accepted: sol.n_accepted,
            n_rejected: sol.n_rejected,
            dim,
        })
    }
}

/// The likelihood's data checks, naming `func`: a float tensor `[B, ...]` of rank ≥ 2 with at
/// least one element per sample.
fn check_data(func: &'static str, data: &Tensor) -> Result<()> {
    if data.rank() < 2 {
        return Err(sde_core::Error::Rank {
            func,
            arg: "data",
            expected: "≥ 2 ([B, ...])",
            got: data.shape().clone(),
        }
        .into());
    }
    sde_core::check_float(func, "data", data)?;
    if sde_core::sample_numel(data)? == 0 {
        return Err(Error::ShapeMismatch {
            what: "likelihood data (elements per sample)",
            expected: "at least one element per sample".into(),
            got: format!("{:?}", data.dims()),
        });
    }
    Ok(())
}

/// The range of the data a likelihood was evaluated on, as the reference's `data.centered`
/// sets it: what fixes the offset of its bits/dim ([`reference_bits_per_dim`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataRange {
    /// Data in [0, 1] (`centered = False`, identity inverse scaler): inverse_scaler(−1) = −1,
    /// +8 bits.
    ZeroOne,
    /// Data in [−1, 1] (`centered = True`, inverse scaler (x + 1)/2): inverse_scaler(−1) = 0,
    /// +7 bits.
    MinusOneOne,
}

impl DataRange {
    /// The reference's `inverse_scaler(-1)` for this range: −1 for [0, 1], 0 for [−1, 1].
    pub fn inverse_scaler_at_minus_one(self) -> f64 {
        match self {
            DataRange::ZeroOne => -1.0,
            DataRange::MinusOneOne => 0.0,
        }
    }

    /// `(lo, hi)`, as [`bits_per_dim`] takes it.
    pub fn bounds(self) -> (f64, f64) {
        match self {
            DataRange::ZeroOne => (0.0, 1.0),
            DataRange::MinusOneOne => (-1.0, 1.0),
        }
    }
}

fn check_range(bit_depth: u32, (lo, hi): (f64, f64)) -> Result<f64> {
    if bit_depth == 0 || bit_depth > 32 {
        return Err(Error::InvalidParameter {
            name: "bit_depth",
            value: bit_depth as f64,
            reason: "must lie in 1..=32",
        });
    }
    if !(lo.is_finite() && hi.is_finite() && hi > lo) {
        return Err(Error::InvalidParameter {
            name: "data_range",
            value: hi - lo,
            reason: "needs finite lo < hi",
        });
    }
    Ok(hi - lo)
}

/// bits/dim of continuous log-densities `log_p: [B]` (nats) of D-dimensional data that was
/// quantised to `bit_depth` bits and mapped to `data_range = (lo, hi)`:
///
/// bpd = −log p / (D ln 2) + bit_depth − log₂(hi − lo).
///
/// A bin of the 2^bits levels has width (hi − lo)/2^bits in data space, so the discrete
/// probability is ≈ p · ((hi − lo)/2^bits)^D. 8-bit data in [0, 1] adds 8, in [−1, 1] adds 7.
pub fn bits_per_dim(
    log_p: &Tensor,
    dim: usize,
    bit_depth: u32,
    data_range: (f64, f64),
) -> Result<Tensor> {
    let width = check_range(bit_depth, data_range)?;
    if dim == 0 {
        return Err(Error::InvalidParameter {
            name: "dim",
            value: 0.0,
            reason: "must be at least 1",
        });
    }
    let offset = bit_depth as f64 - width.log2();
    Ok(log_p.affine(-1.0 / (dim as f64 * std::f64::consts::LN_2), offset)?)
}

/// The reference's conversion (`run_lib.evaluate`): bpd = −log p / (D ln 2) + 7 −
/// inverse_scaler(−1), the "hack" that gives +7 for centred data ([`DataRange::MinusOneOne`],
/// inverse scaler (x + 1)/2) and +8 for data in [0, 1] ([`DataRange::ZeroOne`], identity
/// scaler): both equal [`bits_per_dim`] with 8 bits over [`DataRange::bounds`]. The range is an
/// enum, not the number inverse_scaler(−1), because passing 0 for [0, 1] data is off by exactly
/// one bit.
pub fn reference_bits_per_dim(log_p: &Tensor, dim: usize, data_range: DataRange) -> Result<Tensor> {
    if dim == 0 {
        return Err(Error::InvalidParameter {
            name: "dim",
            value: 0.0,
            reason: "must be at least 1",
        });
    }
    let offset = 7.0 - data_range.inverse_scaler_at_minus_one();
    Ok(log_p.affine(-1.0 / (dim as f64 * std::f64::consts::LN_2), offset)?)
}

/// Uniform dequantisation of `bit_depth`-bit levels in `data_range = (lo, hi)`: with the level
/// k = round((x − lo)/(hi − lo) · (2^bits − 1)) (x = lo + k (hi − lo)/(2^bits − 1), as
/// `ToTensor` produces k/255), returns lo + (hi − lo)(k + u)/2^bits with u ~ U[0, 1) drawn
/// through `noise` (an error if some x lies outside the range). The result has a density whose
/// bits/dim bound the discrete model's ([`bits_per_dim`] with the same `bit_depth` and range).
///
/// Not the reference's `uniform_dequantization` ((255 x + u)/256 without rounding, 8 bits in
/// [0, 1] only): that one is `sde_train::uniform_dequantize`. `x` must be a float tensor.
pub fn dequantize_levels<N: NoiseSource + ?Sized>(
    x: &Tensor,
    bit_depth: u32,
    data_range: (f64, f64),
    noise: &mut N,
) -> Result<Tensor> {
    let width = check_range(bit_depth, data_range)?;
    sde_core::check_float("dequantize_levels", "x", x)?;
    let levels = 2f64.powi(bit_depth as i32);
    let k = x
        .affine(
            (levels - 1.0) / width,
            -data_range.0 * (levels - 1.0) / width,
        )?
        .round()?;
    if x.elem_count() > 0 {
        let lo = k.min_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let hi = k.max_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !(lo >= 0.0 && hi <= levels - 1.0) {
            return Err(Error::InvalidParameter {
                name: "x",
                value: if lo < 0.0 || lo.is_nan() { lo } else { hi },
                reason: "data (as a quantisation level) lies outside data_range or is not finite",
            });
        }
    }
    let u = noise.rand_uniform(x.shape(), x.device(), x.dtype())?;
    Ok((k + u)?.affine(width / levels, data_range.0)?)
}
