//! Continuous-time denoising score matching (`losses.get_sde_loss_fn`) and the [`TrainingLoss`]
//! trait every loss of this crate implements.

use candle_core::{DType, Device, Shape, Tensor};
use sde_core::noise::NoiseSource;
use sde_core::{mul_batch, Mode, ScoreFn, ScoreModel, ScoreModelFn, Sde};
use serde::{Deserialize, Serialize};

use crate::error::{check_param, Error, Result};
use crate::importance::ImportanceSampler;

/// A training objective: a scalar loss for a model on a batch, drawing its randomness
/// (times, labels, noise, projections) from `noise`.
///
/// Implemented by [`SdeLoss`], [`crate::SmldLoss`], [`crate::DdpmLoss`] and
/// [`crate::SlicedScoreMatching`]; the [`crate::Trainer`] is generic over it.
pub trait TrainingLoss {
    /// The mini-batch loss (a scalar tensor, differentiable w.r.t. the model's variables).
    /// `train` runs the model in training mode ([`Mode::Train`]): its dropout masks are drawn
    /// from `noise` too, after the loss's own draws, so one checkpointed generator makes the
    /// whole step reproducible. Evaluation passes `false` ([`Mode::Eval`]).
    fn loss<M: ScoreModel + ?Sized, N: NoiseSource + ?Sized>(
        &self,
        model: &M,
        batch: &Tensor,
        train: bool,
        noise: &mut N,
    ) -> Result<Tensor>;
}

/// Options of the continuous-time DSM loss (the arguments of `get_sde_loss_fn` /
/// `get_step_fn`). Defaults are the reference configs' training defaults: `reduce_mean = false`,
/// `continuous = true`, `likelihood_weighting = false`, `eps = 1e-5`, no importance sampling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SdeLossOptions {
    /// Average the squared error over the data dimensions; otherwise take ½ × the sum.
    pub reduce_mean: bool,
    /// Feed the network continuous time labels (σ(t) for VE, 999 t for VP); `false` uses the
    /// discrete label convention of the SDE ([`sde_core::LabelConvention`]).
    pub continuous: bool,
    /// λ(t) = g(t)² (Song et al. 2021, "Maximum likelihood training"), else λ(t) = σ(t)².
    pub likelihood_weighting: bool,
    /// Smallest training time: t ~ U(eps, T).
    pub eps: f64,
    /// Draw t with density ∝ g(t)²/σ(t)² and reweight, instead of t ~ U(eps, T): the same
    /// objective with lower variance (requires `likelihood_weighting`). See [`ImportanceSampler`].
    pub importance_sampling: bool,
}

impl Default for SdeLossOptions {
    fn default() -> Self {
        Self {
            reduce_mean: false,
            continuous: true,
            likelihood_weighting: false,
            eps: 1e-5,
            importance_sampling: false,
        }
    }
}

/// Continuous-time weighted denoising score matching, mirrors `losses.get_sde_loss_fn`:
///
/// L(θ) = E_t E_{x(0)} E_{z~N(0,I)} [ λ(t) · R(‖s_θ(x(t), t) + z/σ(t)‖²) ],
/// x(t) = mean(x(0), t) + σ(t) z, t = u (T − eps) + eps, u ~ U(0, 1),
///
/// where R is the mean over data dimensions (`reduce_mean`) or ½ × the sum, and
/// λ(t) = g(t)² with `likelihood_weighting`, else σ(t)² (computed as R(‖σ s_θ + z‖²), as the
/// reference does). The batch mean of the per-sample losses is returned.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use rand::SeedableRng;
/// use sde_core::{analytic::GaussianScore, noise::NoiseSource, ScoreModel, ScoreFn, VeSde};
/// use sde_train::{SdeLoss, SdeLossOptions, TrainingLoss};
///
/// // A "network" that returns the exact score of N(0, 1) data (VE labels are σ(t)).
/// struct Exact(GaussianScore<VeSde>);
/// impl ScoreModel for Exact {
///     fn forward_t(&self, x: &Tensor, sigma: &Tensor, _mode: sde_core::Mode<'_>) -> sde_core::Result<Tensor> {
///         // σ(t) = σ_min (σ_max/σ_min)^t  ⇒  t = ln(σ/σ_min) / ln(σ_max/σ_min)
///         let t = (sigma.affine(1.0 / 0.01, 0.0)?.log()? / (50f64 / 0.01).ln())?;
///         self.0.score(x, &t)
///     }
/// }
/// let sde = VeSde::default();
/// let model = Exact(GaussianScore::isotropic(sde.clone(), 0.0, 1.0)?);
/// let loss = SdeLoss::new(&sde, SdeLossOptions { reduce_mean: true, ..Default::default() })?;
/// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
/// let batch = rng.randn(&(64, 2).into(), &Device::Cpu, DType::F32)?; // N(0, 1) data
/// let l = loss.loss(&model, &batch, true, &mut rng)?.to_scalar::<f32>()?;
/// // With the exact score, E‖σ s + z‖² = E[1/(1+σ²)] per dimension: between 0 and 1.
/// assert!(l > 0.0 && l < 1.0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[doc(alias = "get_sde_loss_fn")]
#[derive(Debug, Clone)]
pub struct SdeLoss<S> {
    sde: S,
    options: SdeLossOptions,
    sampler: Option<ImportanceSampler>,
}

/// Grid size of the importance sampler built by [`SdeLoss::new`].
const IMPORTANCE_GRID: usize = 4096;

impl<S: Sde> SdeLoss<S> {
    /// Validates `0 < eps < T` and that importance sampling comes with likelihood weighting.
    pub fn new(sde: S, options: SdeLossOptions) -> Result<Self> {
        let t_end = sde.t_end();
        check_param(
            "eps",
            options.eps,
            options.eps > 0.0 && options.eps < t_end,
            "must lie in (0, T)",
        )?;
        if options.importance_sampling && !options.likelihood_weighting {
            return Err(Error::InvalidParameter {
                name: "importance_sampling",
                value: 1.0,
                reason: "importance sampling of t reweights the likelihood weighting λ = g²; \
                         set likelihood_weighting = true",
            });
        }
        let sampler = if options.importance_sampling {
            Some(ImportanceSampler::new(&sde, options.eps, IMPORTANCE_GRID)?)
        } else {
            None
        };
        Ok(Self {
            sde,
            options,
            sampler,
        })
    }

    /// The options.
    pub fn options(&self) -> &SdeLossOptions {
        &self.options
    }

    /// The SDE.
    pub fn sde(&self) -> &S {
        &self.sde
    }

    /// The importance sampler of t, when `importance_sampling` is on.
    pub fn importance_sampler(&self) -> Option<&ImportanceSampler> {
        self.sampler.as_ref()
    }

    /// Times for the uniform draws `u: [B]`: t = u (T − eps) + eps, or the importance
    /// sampler's inverse CDF, with the per-sample weight 1 / ((T − eps) q(t)) (1 when uniform).
    pub fn times(&self, u: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        match &self.sampler {
            None => {
                let t_end = self.sde.t_end();
                let eps = self.options.eps;
                Ok((u.affine(t_end - eps, eps)?, None))
            }
            Some(s) => {
                let (t, w) = s.sample_from_uniform(u)?;
                Ok((t, Some(w)))
            }
        }
    }

    /// Per-sample losses `[B]` for explicit draws: `u: [B]` (uniform on [0, 1), the
    /// reference's `torch.rand`) and `z` shaped like the batch (`torch.randn_like`); the model
    /// runs in `mode` (dropout masks from its source in training).
    pub fn per_sample_from_draws<M: ScoreModel + ?Sized>(
        &self,
        model: &M,
        batch: &Tensor,
        u: &Tensor,
        z: &Tensor,
        mut mode: Mode<'_>,
    ) -> Result<Tensor> {
        check_draws(batch, u, z)?;
        let (t, weight) = self.times(u)?;
        let (mean, std) = self.sde.marginal_prob(batch, &t)?;
        let std = std.to_dtype(batch.dtype())?;
        let perturbed = (mean + mul_batch(&std, z)?)?;
        let score_fn =
            ScoreModelFn::new(&self.sde, model, self.options.continuous).train(mode.reborrow());
        let score = score_fn.score(&perturbed, &t)?;
        let losses = if !self.options.likelihood_weighting {
            // (score · std + z)²
            let r = (mul_batch(&std, &score)? + z)?.sqr()?;
            reduce(&r, self.options.reduce_mean)?
        } else {
            // (score + z / std)² · g²
            let b = batch.dim(0)?;
            let probe = Tensor::zeros((b, 1), t.dtype(), t.device())?;
            let g2 = self.sde.sde(&probe, &t)?.1.sqr()?.to_dtype(batch.dtype())?;
            let z_over_std = z.broadcast_div(&sde_core::expand_batch(&std, z)?)?;
            let r = (score + z_over_std)?.sqr()?;
            let l = (reduce(&r, self.options.reduce_mean)? * g2)?;
            match weight {
                Some(w) => (l * w.to_dtype(batch.dtype())?)?,
                None => l,
            }
        };
        Ok(losses)
    }

    /// The batch loss (mean of [`per_sample_from_draws`](Self::per_sample_from_draws)).
    pub fn loss_from_draws<M: ScoreModel + ?Sized>(
        &self,
        model: &M,
        batch: &Tensor,
        u: &Tensor,
        z: &Tensor,
        mode: Mode<'_>,
    ) -> Result<Tensor> {
        Ok(self
            .per_sample_from_draws(model, batch, u, z, mode)?
            .mean_all()?)
    }
}

impl<S: Sde> TrainingLoss for SdeLoss<S> {
    /// Draws u ~ U(0, 1) `[B]`, then z ~ N(0, I) like the batch (the reference's order), and
    /// calls [`SdeLoss::loss_from_draws`] (in training, the dropout masks come next from
    /// `noise`).
    fn loss<M: ScoreModel + ?Sized, N: NoiseSource + ?Sized>(
        &self,
        model: &M,
        batch: &Tensor,
        train: bool,
        noise: &mut N,
    ) -> Result<Tensor> {
        let b = batch.dim(0)?;
        let u = noise.rand_uniform(&b.into(), batch.device(), batch.dtype())?;
        let z = sde_core::noise::randn_like(batch, noise)?;
        let mut noise = DynNoise(noise);
        self.loss_from_draws(model, batch, &u, &z, train_mode(train, &mut noise))
    }
}

/// A `&mut N` usable as `&mut dyn NoiseSource` for any `N: NoiseSource + ?Sized` (an unsized
/// `N`, e.g. `dyn NoiseSource` itself, cannot be coerced directly): forwards every draw.
pub(crate) struct DynNoise<'a, N: ?Sized>(pub(crate) &'a mut N);

impl<N: NoiseSource + ?Sized> NoiseSource for DynNoise<'_, N> {
    fn randn(&mut self, shape: &Shape, device: &Device, dtype: DType) -> sde_core::Result<Tensor> {
        self.0.randn(shape, device, dtype)
    }
    fn rand_uniform(
        &mut self,
        shape: &Shape,
        device: &Device,
        dtype: DType,
    ) -> sde_core::Result<Tensor> {
        self.0.rand_uniform(shape, device, dtype)
    }
    fn rademacher(
        &mut self,
        shape: &Shape,
        device: &Device,
        dtype: DType,
    ) -> sde_core::Result<Tensor> {
        self.0.rademacher(shape, device, dtype)
    }
}

/// [`Mode::Train`] drawing from `noise` when `train`, else [`Mode::Eval`].
pub(crate) fn train_mode<'a>(train: bool, noise: &'a mut dyn NoiseSource) -> Mode<'a> {
    if train {
        Mode::Train(noise)
    } else {
        Mode::Eval
    }
}

/// R(r) per sample: the mean over non-batch dims, or ½ × the sum (`reduce_op`).
pub(crate) fn reduce(r: &Tensor, reduce_mean: bool) -> Result<Tensor> {
    let flat = r.flatten_from(1)?;
    Ok(if reduce_mean {
        flat.mean(1)?
    } else {
        (flat.sum(1)? * 0.5)?
    })
}

/// Checks `u: [B]` and `z` shaped like the batch, both floats.
pub(crate) fn check_draws(batch: &Tensor, u: &Tensor, z: &Tensor) -> Result<()> {
    let b = batch.dim(0)?;
    if u.dims() != [b] {
        return Err(Error::ShapeMismatch {
            what: "uniform draws u",
            expected: format!("[{b}]"),
            got: format!("{:?}", u.dims()),
        });
    }
    check_like(batch, z, "noise z")
}

/// Checks that `z` has the shape and dtype of `batch`.
pub(crate) fn check_like(batch: &Tensor, z: &Tensor, what: &'static str) -> Result<()> {
    if z.shape() != batch.shape() || z.dtype() != batch.dtype() {
        return Err(Error::ShapeMismatch {
            what,
            expected: format!("{:?} {:?}", batch.dims(), batch.dtype()),
            got: format!("{:?} {:?}", z.dims(), z.dtype()),
        });
    }
    if !matches!(
        batch.dtype(),
        DType::F32 | DType::F64 | DType::F16 | DType::BF16
    ) {
        return Err(Error::ShapeMismatch {
            what: "batch dtype",
            expected: "a float dtype".into(),
            got: format!("{:?}", batch.dtype()),
        });
    }
    Ok(())
}
