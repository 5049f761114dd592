//! Controllable generation (`controllable_generation.py`) with the PC sampler and with every
//! sampler of the driver: inpainting, colorization, and class-conditional sampling with a
//! classifier's gradient.
//!
//! - [`PcSampler::inpaint`]: known entries given by a 0/1 mask are replaced after every
//!   corrector and predictor update by the forward-noised data, x ← x ⊙ (1−m) + (a_t y + σ_t z) ⊙ m
//!   (`get_pc_inpainter`).
//! - [`PcSampler::colorize`]: the same in the orthonormal decoupled colour space where the grey
//!   level is one channel (`get_pc_colorizer`).
//! - [`GuidedScore`]: s(x, t) + w ∇ₓ log p_t(y | x) from any [`ClassifierGrad`]
//!   (`get_pc_conditional_sampler`), usable with every sampler of this crate.

use candle_core::{DType, Tensor, Var, D};
use sde_core::noise::{randn_like, NoiseSource};
use sde_core::{mul_batch, ScoreFn, Sde};

use crate::corrector::Corrector;
use crate::driver::{SampleOutput, Sampler};
use crate::error::{Error, Result};
use crate::pc::{PcOutput, PcSampler};
use crate::predictor::{Predictor, Update};
use crate::step::Step;

/// The reference's decoupling matrix M (columns (1,1,1)/√3, (−2,1,1)/√6, (0,1,−1)/√2), exact in
/// f64: decouple(x)_j = Σ_i x_i M_ij, and since M is orthonormal couple = M⁻¹ = Mᵀ.
fn decoupling_matrix() -> [[f64; 3]; 3] {
    let (a, b, c) = (1.0 / 3f64.sqrt(), 1.0 / 6f64.sqrt(), 1.0 / 2f64.sqrt());
    [[a, -2.0 * b, 0.0], [a, b, c], [a, b, -c]]
}

/// y_j = Σ_i x_i K_ij over the channel dim of `x: [B, 3, ...]`.
fn channel_mix(x: &Tensor, k: &[[f64; 3]; 3]) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let b = dims[0];
    let flat = x.reshape((b, 3, ()))?;
    // Kᵀ x: [3, 3] @ [B, 3, P]
    let kt: Vec<f64> = (0..3).flat_map(|j| (0..3).map(move |i| k[i][j])).collect();
    let kt = Tensor::from_vec(kt, (1, 3, 3), x.device())?.to_dtype(x.dtype())?;
    Ok(kt.broadcast_matmul(&flat)?.reshape(dims)?)
}

fn decouple(x: &Tensor) -> Result<Tensor> {
    channel_mix(x, &decoupling_matrix())
}

fn couple(x: &Tensor) -> Result<Tensor> {
    let m = decoupling_matrix();
    let mut mt = [[0.0; 3]; 3];
    for (i, row) in m.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            mt[j][i] = *v;
        }
    }
    channel_mix(x, &mt)
}

/// The inpainting mask as `data`'s dtype, broadcast to its shape, with its complement; checks
/// that every entry is 0 or 1 ([`Error::InvalidMask`]).
fn inpainting_mask(data: &Tensor, mask: &Tensor) -> Result<(Tensor, Tensor)> {
    if let Some((index, &value)) = sde_core::to_host_f64(mask)?
        .iter()
        .enumerate()
        .find(|(_, v)| !(**v == 0.0 || **v == 1.0))
    {
        return Err(Error::InvalidMask {
            what: "inpainting mask",
            value,
            index,
        });
    }
    let mask = mask
        .to_dtype(data.dtype())?
        .broadcast_as(data.shape())
        .map_err(|_| Error::ShapeMismatch {
            what: "inpainting mask",
            expected: format!("{:?} or broadcastable to it", data.dims()),
            got: format!("{:?}", mask.dims()),
        })?
        .contiguous()?;
    let inv = mask.affine(-1.0, 1.0)?;
    Ok((mask, inv))
}

/// The inpainting projection at time t: x ← x ⊙ (1 − m) + (a_t y + σ_t z) ⊙ m,
/// x̄ ← x̄ ⊙ (1 − m) + a_t y ⊙ m.
fn inpaint_projection<'a, S: Sde + ?Sized, N: NoiseSource + ?Sized>(
    sde: &'a S,
    data: &'a Tensor,
    mask: &'a Tensor,
    inv: &'a Tensor,
) -> impl FnMut(Update, &Tensor, &mut N) -> Result<Update> + 'a {
    move |up, t, noise| {
        let (mean, std) = sde.marginal_prob(data, t)?;
        let z = randn_like(&up.x, noise)?;
        let masked = (&mean + mul_batch(&std, &z)?)?;
        Ok(Update {
            x: ((&up.x * inv)? + (masked * mask)?)?,
            x_mean: ((&up.x_mean * inv)? + (mean * mask)?)?,
        })
    }
}

/// The colorization setup: (mask over the decoupled channels, its complement, the decoupled
/// grey images); checks `gray: [B, 3, ...]`.
fn colorization_parts(gray: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    if gray.rank() < 2 || gray.dim(1)? != 3 {
        return Err(Error::ShapeMismatch {
            what: "colorization input",
            expected: "[B, 3, ...] (RGB channels)".into(),
            got: format!("{:?}", gray.dims()),
        });
    }
    let mut mshape = vec![1usize; gray.rank()];
    mshape[1] = 3;
    let mask = Tensor::from_vec(vec![1f32, 0.0, 0.0], mshape, gray.device())?
        .to_dtype(gray.dtype())?
        .broadcast_as(gray.shape())?
        .contiguous()?;
    let inv = mask.affine(-1.0, 1.0)?;
    let known = decouple(gray)?;
    Ok((mask, inv, known))
}

/// The colorization projection at time t, in the decoupled space.
fn colorize_projection<'a, S: Sde + ?Sized, N: NoiseSource + ?Sized>(
    sde: &'a S,
    known: &'a Tensor,
    mask: &'a Tensor,
    inv: &'a Tensor,
) -> impl FnMut(Update, &Tensor, &mut N) -> Result<Update> + 'a {
    move |up, t, noise| {
        let (mean, std) = sde.marginal_prob(known, t)?;
        let z = randn_like(&up.x, noise)?;
        let masked = (&mean + mul_batch(&std, &z)?)?;
        Ok(Update {
            x: couple(&((decouple(&up.x)? * inv)? + (masked * mask)?)?)?,
            x_mean: couple(&((decouple(&up.x_mean)? * inv)? + (mean * mask)?)?)?,
        })
    }
}

impl<P, C> PcSampler<P, C> {
    /// PC inpainting (`controllable_generation.get_pc_inpainter`): fills the entries of `data`
    /// where `mask` is 0, keeping those where it is 1.
    ///
    /// Start: x = y ⊙ m + x_T ⊙ (1 − m), x_T ~ p_T. After every corrector and predictor update
    /// at time t, with (a_t y, σ_t) = `marginal_prob(y, t)` and z ~ N(0, I):
    /// x ← x ⊙ (1 − m) + (a_t y + σ_t z) ⊙ m,  x̄ ← x̄ ⊙ (1 − m) + a_t y ⊙ m.
    ///
    /// `data: [B, ...]`, `mask`: the shape of `data` or broadcastable to it (e.g. `[1, ...]`),
    /// with values in {0, 1} (anything else is [`Error::InvalidMask`]). Differs from the
    /// reference in one place: the reference builds
    /// x̄ from the noisy x (`x_mean = x * (1 - mask) + ...` after reassigning x), so its
    /// `denoise` does not denoise the inpainted entries; here x̄ keeps the update's own mean.
    /// Draws: prior, then per update the update's draws and one for the known entries.
    /// Every other sampler inpaints through [`Sampler::inpaint`].
    #[doc(alias = "get_pc_inpainter")]
    pub fn inpaint<S, F, N>(
        &self,
        sde: &S,
        score: &F,
        data: &Tensor,
        mask: &Tensor,
        noise: &mut N,
    ) -> Result<PcOutput>
    where
        S: Sde + ?Sized,
        P: Predictor<S>,
        C: Corrector<S>,
        F: ScoreFn + ?Sized,
        N: NoiseSource + ?Sized,
    {
        let (mask, inv) = inpainting_mask(data, mask)?;
        let prior = sde.prior_sampling(data.shape(), data.device(), data.dtype(), noise)?;
        let x_init = ((data * &mask)? + (prior * &inv)?)?;
        self.run_with(
            sde,
            score,
            &x_init,
            noise,
            inpaint_projection(sde, data, &mask, &inv),
            |_, _, _| {},
        )
    }

    /// PC colorization (`controllable_generation.get_pc_colorizer`) of grey images
    /// `gray: [B, 3, ...]` (equal R, G, B values).
    ///
    /// In the orthonormal decoupled space u = Mᵀ x (u₀ = (R+G+B)/√3 carries the grey level,
    /// u₁, u₂ the colour), the grey channel is the known part of an inpainting problem: after
    /// every update, u ← u ⊙ (1 − m) + (a_t Mᵀ y + σ_t z) ⊙ m with m = (1, 0, 0) over the
    /// channels, then x = M u. As in [`inpaint`](Self::inpaint), x̄ keeps the update's own mean
    /// (the reference rebuilds it from the noisy x). M is the reference's matrix in exact f64
    /// form and M⁻¹ = Mᵀ.
    #[doc(alias = "get_pc_colorizer")]
    pub fn colorize<S, F, N>(
        &self,
        sde: &S,
        score: &F,
        gray: &Tensor,
        noise: &mut N,
    ) -> Result<PcOutput>
    where
        S: Sde + ?Sized,
        P: Predictor<S>,
        C: Corrector<S>,
        F: ScoreFn + ?Sized,
        N: NoiseSource + ?Sized,
    {
        let (mask, inv, known) = colorization_parts(gray)?;
        let prior = sde.prior_sampling(gray.shape(), gray.device(), gray.dtype(), noise)?;
        let x_init = couple(&((&known * &mask)? + (decouple(&prior)? * &inv)?)?)?;
        self.run_with(
            sde,
            score,
            &x_init,
            noise,
            colorize_projection(sde, &known, &mask, &inv),
            |_, _, _| {},
        )
    }
}

impl<St> Sampler<St> {
    /// Inpainting with any sampler: the projection of [`PcSampler::inpaint`] applied after
    /// every step (at the time the step reached, [`Step::result_time`]) and to the denoised
    /// result (noise-free); the mask must hold only 0 and 1 ([`Error::InvalidMask`]).
    pub fn inpaint<S, F, N>(
        &self,
        sde: &S,
        score: &F,
        data: &Tensor,
        mask: &Tensor,
        noise: &mut N,
    ) -> Result<SampleOutput>
    where
        S: Sde + ?Sized,
        St: Step<S>,
        F: ScoreFn + ?Sized,
        N: NoiseSource + ?Sized,
    {
        let (mask, inv) = inpainting_mask(data, mask)?;
        let prior = sde.prior_sampling(data.shape(), data.device(), data.dtype(), noise)?;
        let x_init = ((data * &mask)? + (prior * &inv)?)?;
        self.run_constrained(
            sde,
            score,
            &x_init,
            noise,
            inpaint_projection(sde, data, &mask, &inv),
            |_, _, _| {},
        )
    }

    /// Colorization with any sampler (see [`PcSampler::colorize`]).
    pub fn colorize<S, F, N>(
        &self,
        sde: &S,
        score: &F,
        gray: &Tensor,
        noise: &mut N,
    ) -> Result<SampleOutput>
    where
        S: Sde + ?Sized,
        St: Step<S>,
        F: ScoreFn + ?Sized,
        N: NoiseSource + ?Sized,
    {
        let (mask, inv, known) = colorization_parts(gray)?;
        let prior = sde.prior_sampling(gray.shape(), gray.device(), gray.dtype(), noise)?;
        let x_init = couple(&((&known * &mask)? + (decouple(&prior)? * &inv)?)?)?;
        self.run_constrained(
            sde,
            score,
            &x_init,
            noise,
            colorize_projection(sde, &known, &mask, &inv),
            |_, _, _| {},
        )
    }
}

/// The gradient of a time-dependent classifier, ∇ₓ log p_t(y | x), for class-conditional
/// sampling (the reference's `classifier_grad_fn`).
///
/// `x: [B, ...]`, `t: [B]`, `labels: [B]` (integer classes) → `[B, ...]`.
#[doc(alias = "classifier_grad_fn")]
pub trait ClassifierGrad {
    /// ∇ₓ log p_t(y | x) at each sample's label.
    fn grad_log_prob(&self, x: &Tensor, t: &Tensor, labels: &Tensor) -> sde_core::Result<Tensor>;
}

impl<G: ClassifierGrad + ?Sized> ClassifierGrad for &G {
    fn grad_log_prob(&self, x: &Tensor, t: &Tensor, labels: &Tensor) -> sde_core::Result<Tensor> {
        (**self).grad_log_prob(x, t, labels)
    }
}

/// A classifier given by its logits `f(x, t) → [B, K]` (a noise-conditional network, or any
/// differentiable function), differentiated with candle's autograd:
/// ∇ₓ log p_t(y | x) = ∇ₓ [f(x,t)_y − logsumexp_k f(x,t)_k].
pub struct AutogradClassifier<L> {
    logits: L,
}

impl<L: Fn(&Tensor, &Tensor) -> sde_core::Result<Tensor>> AutogradClassifier<L> {
    /// Wraps a logits function `(x, t) → [B, K]`.
    pub fn new(logits: L) -> Self {
        Self { logits }
    }
}

impl<L: Fn(&Tensor, &Tensor) -> sde_core::Result<Tensor>> ClassifierGrad for AutogradClassifier<L> {
    fn grad_log_prob(&self, x: &Tensor, t: &Tensor, labels: &Tensor) -> sde_core::Result<Tensor> {
        let b = x.dim(0)?;
        let xv = Var::from_tensor(&x.detach())?;
        let logits = (self.logits)(xv.as_tensor(), t)?;
        if logits.rank() != 2 || logits.dim(0)? != b || labels.dims() != [b] {
            return Err(sde_core::Error::ShapeMismatch {
                what: "classifier logits / labels",
                expected: format!("logits [{b}, K] and labels [{b}]"),
                got: format!("logits {:?}, labels {:?}", logits.dims(), labels.dims()),
            });
        }
        let m = logits.max_keepdim(D::Minus1)?.detach();
        let lse = logits
            .broadcast_sub(&m)?
            .exp()?
            .sum_keepdim(D::Minus1)?
            .log()?
            .add(&m)?;
        let idx = labels.to_dtype(DType::U32)?.unsqueeze(1)?;
        let picked = logits.gather(&idx, 1)?;
        let obj = (picked - lse)?.sum_all()?;
        let grads = obj.backward()?;
        Ok(match grads.get(xv.as_tensor()) {
            Some(g) => g.clone(),
            None => x.zeros_like()?,
        })
    }
}

/// Classifier-guided score s(x, t) + w ∇ₓ log p_t(y | x) (`get_pc_conditional_sampler`): by
/// Bayes, ∇ₓ log p_t(x | y) = ∇ₓ log p_t(x) + ∇ₓ log p_t(y | x), so with the exact classifier
/// and guidance scale w = 1 samplers draw from p(x | y); w > 1 sharpens the conditioning.
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use rand::SeedableRng;
/// use sde_core::{analytic::GaussianScore, VeSde};
/// use sde_solvers::controllable::{AutogradClassifier, GuidedScore};
/// use sde_solvers::{corrector::NoCorrector, pc::PcSampler, predictor::ReverseDiffusionPredictor};
///
/// let sde = VeSde::new(0.01, 50.0, 100)?;
/// let score = GaussianScore::isotropic(&sde, 0.0, 1.0)?;
/// // A two-class logistic classifier on the first coordinate (logits ±x₀).
/// let clf = AutogradClassifier::new(|x: &Tensor, _t: &Tensor| -> sde_core::Result<Tensor> {
///     let x0 = x.narrow(1, 0, 1)?;
///     Ok(Tensor::cat(&[&x0.neg()?, &x0], 1)?)
/// });
/// let labels = Tensor::new(&[1u32, 1, 1, 1], &Device::Cpu)?;
/// let guided = GuidedScore::new(&score, &clf, labels, 1.0)?;
/// let sampler = PcSampler::new(ReverseDiffusionPredictor::new(false), NoCorrector).sampling_eps(1e-5);
/// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
/// let out = sampler.sample(&sde, &guided, (4, 2), &Device::Cpu, DType::F32, &mut rng)?;
/// assert_eq!(out.x.dims(), &[4, 2]);
/// # Ok::<(), sde_solvers::Error>(())
/// ```
#[doc(alias = "get_pc_conditional_sampler")]
pub struct GuidedScore<'a, F: ?Sized, G: ?Sized> {
    score: &'a F,
    classifier: &'a G,
    labels: Tensor,
    scale: f64,
}

impl<'a, F: ScoreFn + ?Sized, G: ClassifierGrad + ?Sized> GuidedScore<'a, F, G> {
    /// `labels: [B]` (one class per sample); `scale` w must be finite and ≥ 0.
    pub fn new(score: &'a F, classifier: &'a G, labels: Tensor, scale: f64) -> Result<Self> {
        if !(scale.is_finite() && scale >= 0.0) {
            return Err(Error::InvalidParameter {
                name: "scale",
                value: scale,
                reason: "guidance scale must be finite and >= 0",
            });
        }
        if labels.rank() != 1 {
            return Err(Error::ShapeMismatch {
                what: "class labels",
                expected: "[B]".into(),
                got: format!("{:?}", labels.dims()),
            });
        }
        Ok(Self {
            score,
            classifier,
            labels,
            scale,
        })
    }
}

impl<F: ScoreFn + ?Sized, G: ClassifierGrad + ?Sized> ScoreFn for GuidedScore<'_, F, G> {
    /// s(x, t) + w ∇ₓ log p_t(y | x).
    fn score(&self, x: &Tensor, t: &Tensor) -> sde_core::Result<Tensor> {
        let s = self.score.score(x, t)?;
        if self.scale == 0.0 {
            return Ok(s);
        }
        if self.labels.dim(0)? != x.dim(0)? {
            return Err(sde_core::Error::ShapeMismatch {
                what: "class labels",
                expected: format!("[{}]", x.dim(0)?),
                got: format!("{:?}", self.labels.dims()),
            });
        }
        let labels = self.labels.to_device(x.device())?;
        let g = self.classifier.grad_log_prob(x, t, &labels)?;
        Ok((s + g.affine(self.scale, 0.0)?)?)
    }
}
