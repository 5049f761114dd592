//! Sliced score matching (Song, Garg, Shi & Ermon 2019) for time-dependent scores.

use candle_core::{DType, Device, Shape, Tensor};
use sde_core::noise::NoiseSource;
use sde_core::{expand_batch, mul_batch, Mode, ScoreFn, ScoreModel, ScoreModelFn, Sde};
use serde::{Deserialize, Serialize};

use crate::error::{check_param, Error, Result};
use crate::loss::{check_draws, train_mode, DynNoise, TrainingLoss};

/// The distribution of the random projections v (both have E[v vᵀ] = I).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Projection {
    /// v ~ N(0, I).
    Gaussian,
    /// v ∈ {−1, +1}^D uniformly (lower variance of vᵀ∇s v).
    Rademacher,
}

/// Sliced score matching at every noise level of an SDE:
///
/// L(θ) = E_t λ(t) E_{x(t)} E_v [ vᵀ ∇ₓ s_θ(x(t), t) v + ½ (vᵀ s_θ(x(t), t))² ]
///
/// (with `variance_reduction`, SSM-VR: ½ ‖s_θ‖² replaces ½ (vᵀ s_θ)²), x(t) = mean + σ(t) z drawn
/// from the SDE's kernel, t ~ U(eps, T), λ(t) = σ(t)² or g(t)² (`likelihood_weighting`).
/// Unlike DSM it never uses the kernel's score −z/σ, only samples of x(t), so it applies to
/// perturbations whose kernel score is unknown. Up to a θ-independent constant, the objective
/// equals ½ λ E‖s_θ − ∇ log p_t‖², the same minimiser as DSM.
///
/// The directional derivative vᵀ∇ₓs v is a central difference,
/// vᵀ (s(x + h v) − s(x − h v)) / (2h) with h = `fd_step` · σ(t) (exact for scores linear in x,
/// O(h²) otherwise), which needs only first-order autograd (candle detaches gradients, so a
/// Hessian-vector product through the network is not available). In training mode the three
/// evaluations s(x + h v), s(x − h v) and s(x) share one set of dropout masks (drawn from the
/// caller's source in the first and replayed in the other two), so the difference is that of
/// one function.
///
/// Reduction over data dims: the sum, or with `reduce_mean` 2/D × the sum, so that the loss
/// differs from [`crate::SdeLoss`]'s (½ sum resp. mean) by a constant in θ only.
/// `n_particles` projections are drawn per sample (the batch is repeated, as the reference
/// SSM code does).
#[derive(Debug, Clone)]
pub struct SlicedScoreMatching<S> {
    sde: S,
    options: SsmOptions,
}

/// Options of [`SlicedScoreMatching`]. Defaults: Rademacher projections, 1 particle, no
/// variance reduction, `eps = 1e-5`, λ = σ², `reduce_mean = false`, `continuous = true`,
/// `fd_step = 1e-2`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SsmOptions {
    /// Distribution of v.
    pub projection: Projection,
    /// Projections per sample.
    pub n_particles: usize,
    /// SSM-VR: ½‖s‖² in place of ½ (vᵀ s)².
    pub variance_reduction: bool,
    /// Smallest training time.
    pub eps: f64,
    /// λ(t) = g(t)² instead of σ(t)².
    pub likelihood_weighting: bool,
    /// Scale the per-sample sum by 2/D.
    pub reduce_mean: bool,
    /// Continuous time labels (see [`crate::SdeLossOptions::continuous`]).
    pub continuous: bool,
    /// Central-difference step relative to σ(t).
    pub fd_step: f64,
}

impl Default for SsmOptions {
    fn default() -> Self {
        Self {
            projection: Projection::Rademacher,
            n_particles: 1,
            variance_reduction: false,
            eps: 1e-5,
            likelihood_weighting: false,
            reduce_mean: false,
            continuous: true,
            fd_step: 1e-2,
        }
    }
}

impl<S: Sde> SlicedScoreMatching<S> {
    /// Validates `0 < eps < T`, `n_particles ≥ 1`, `fd_step > 0`.
    pub fn new(sde: S, options: SsmOptions) -> Result<Self> {
        let t_end = sde.t_end();
        check_param(
            "eps",
            options.eps,
            options.eps > 0.0 && options.eps < t_end,
            "must lie in (0, T)",
        )?;
        check_param(
            "n_particles",
            options.n_particles as f64,
            options.n_particles >= 1,
            "must be at least 1",
        )?;
        check_param(
            "fd_step",
            options.fd_step,
            options.fd_step > 0.0,
            "must be > 0",
        )?;
        Ok(Self { sde, options })
    }

    /// The options.
    pub fn options(&self) -> &SsmOptions {
        &self.options
    }

    /// Per-sample losses `[P·B]` for explicit draws: `u: [B]` (t = u (T − eps) + eps), `z` like
    /// the batch, and projections `v: [P·B, ...]` (P = `n_particles`; row p·B + i projects
    /// sample i); the model runs in `mode`, with one set of dropout masks for its three calls.
    pub fn per_sample_from_draws<M: ScoreModel + ?Sized>(
        &self,
        model: &M,
        batch: &Tensor,
        u: &Tensor,
        z: &Tensor,
        v: &Tensor,
        mut mode: Mode<'_>,
    ) -> Result<Tensor> {
        check_draws(batch, u, z)?;
        let p = self.options.n_particles;
        let b = batch.dim(0)?;
        let mut vshape = batch.dims().to_vec();
        vshape[0] = p * b;
        if v.dims() != vshape.as_slice() {
            return Err(Error::ShapeMismatch {
                what: "projections v",
                expected: format!("{vshape:?}"),
                got: format!("{:?}", v.dims()),
            });
        }
        let eps = self.options.eps;
        let t = u.affine(self.sde.t_end() - eps, eps)?;
        let (mean, std) = self.sde.marginal_prob(batch, &t)?;
        let std = std.to_dtype(batch.dtype())?;
        let x = (mean + mul_batch(&std, z)?)?;
        // Repeat the batch P times along dim 0.
        let rep = |a: &Tensor| -> Result<Tensor> { Ok(Tensor::cat(&vec![a.clone(); p], 0)?) };
        let (x, t, std) = (rep(&x)?, rep(&t)?, rep(&std)?);
        let mut replay = Replay {
            source: mode.noise(),
            tape: Vec::new(),
            next: None,
        };
        let train = replay.source.is_some();
        // One evaluation; the first records the dropout draws, the later ones replay them.
        let mut score = |x: &Tensor| -> Result<Tensor> {
            let score_fn = ScoreModelFn::new(&self.sde, model, self.options.continuous);
            let score_fn = score_fn.train(train_mode(train, &mut replay));
            let s = score_fn.score(x, &t)?;
            drop(score_fn);
            replay.next = Some(0);
            Ok(s)
        };
        let h = (std.clone() * self.options.fd_step)?;
        let hv = mul_batch(&h, v)?;
        let s_plus = score(&(&x + &hv)?)?;
        let s_minus = score(&(&x - &hv)?)?;
        let dir = (s_plus - s_minus)?.broadcast_div(&expand_batch(&(h * 2.0)?, v)?)?;
        let jac = (v * dir)?.flatten_from(1)?.sum(1)?;
        let s = score(&x)?;
        let quad = if self.options.variance_reduction {
            s.sqr()?.flatten_from(1)?.sum(1)?
        } else {
            (v * &s)?.flatten_from(1)?.sum(1)?.sqr()?
        };
        let mut per = (jac + (quad * 0.5)?)?;
        if self.options.reduce_mean {
            let d = sde_core::sample_numel(batch)? as f64;
            per = (per * (2.0 / d))?;
        }
        let lambda = if self.options.likelihood_weighting {
            let probe = Tensor::zeros((t.dim(0)?, 1), t.dtype(), t.device())?;
            self.sde.sde(&probe, &t)?.1.sqr()?.to_dtype(batch.dtype())?
        } else {
            std.sqr()?
        };
        Ok((per * lambda)?)
    }

    /// The batch loss for explicit draws (mean of the per-sample losses).
    pub fn loss_from_draws<M: ScoreModel + ?Sized>(
        &self,
        model: &M,
        batch: &Tensor,
        u: &Tensor,
        z: &Tensor,
        v: &Tensor,
        mode: Mode<'_>,
    ) -> Result<Tensor> {
        Ok(self
            .per_sample_from_draws(model, batch, u, z, v, mode)?
            .mean_all()?)
    }
}

impl<S: Sde> TrainingLoss for SlicedScoreMatching<S> {
    /// Draws u `[B]`, z like the batch, then the projections `[P·B, ...]`.
    fn loss<M: ScoreModel + ?Sized, N: NoiseSource + ?Sized>(
        &self,
        model: &M,
        batch: &Tensor,
        train: bool,
        noise: &mut N,
    ) -> Result<Tensor> {
        let b = batch.dim(0)?;
        let (dev, dt) = (batch.device(), batch.dtype());
        let u = noise.rand_uniform(&b.into(), dev, dt)?;
        let z = sde_core::noise::randn_like(batch, noise)?;
        let mut vshape = batch.dims().to_vec();
        vshape[0] = self.options.n_particles * b;
        let vshape = candle_core::Shape::from(vshape);
        let v = match self.options.projection {
            Projection::Gaussian => noise.randn(&vshape, dev, dt)?,
            Projection::Rademacher => noise.rademacher(&vshape, dev, dt)?,
        };
        let mut noise = DynNoise(noise);
        self.loss_from_draws(model, batch, &u, &z, &v, train_mode(train, &mut noise))
    }
}

/// Records the draws of the first model call from `source` and replays them, in order, in the
/// later calls (`next = Some(i)`: replaying, draw `i` comes next).
struct Replay<'a> {
    source: Option<&'a mut dyn NoiseSource>,
    tape: Vec<Tensor>,
    next: Option<usize>,
}

impl Replay<'_> {
    fn draw(
        &mut self,
        shape: &Shape,
        device: &Device,
        dtype: DType,
        fresh: impl FnOnce(&mut dyn NoiseSource) -> sde_core::Result<Tensor>,
    ) -> sde_core::Result<Tensor> {
        match self.next {
            None => {
                let Some(source) = self.source.as_deref_mut() else {
                    return Err(sde_core::Error::Unsupported(
                        "sliced score matching: a draw in evaluation mode".into(),
                    ));
                };
                let t = fresh(source)?;
                self.tape.push(t.clone());
                Ok(t)
            }
            Some(i) => {
                let t = self.tape.get(i).cloned().filter(|t| {
                    t.shape() == shape && t.dtype() == dtype && t.device().same_device(device)
                });
                let Some(t) = t else {
                    return Err(sde_core::Error::Unsupported(format!(
                        "sliced score matching: model call draws {shape:?} {dtype:?} as draw {i}, \
                         unlike its first call (the three evaluations must draw alike)"
                    )));
                };
                self.next = Some(i + 1);
                Ok(t)
            }
        }
    }
}

impl NoiseSource for Replay<'_> {
    fn randn(&mut self, shape: &Shape, device: &Device, dtype: DType) -> sde_core::Result<Tensor> {
        self.draw(shape, device, dtype, |n| n.randn(shape, device, dtype))
    }
    fn rand_uniform(
        &mut self,
        shape: &Shape,
        device: &Device,
        dtype: DType,
    ) -> sde_core::Result<Tensor> {
        self.draw(shape, device, dtype, |n| {
            n.rand_uniform(shape, device, dtype)
        })
    }
    fn rademacher(
        &mut self,
        shape: &Shape,
        device: &Device,
        dtype: DType,
    ) -> sde_core::Result<Tensor> {
        self.draw(shape, device, dtype, |n| n.rademacher(shape, device, dtype))
    }
}
