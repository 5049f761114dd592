//! The discrete-time losses of SMLD/NCSN (`get_smld_loss_fn`) and DDPM (`get_ddpm_loss_fn`).

use candle_core::{DType, Device, Tensor};
use sde_core::noise::NoiseSource;
use sde_core::{from_host_f64, mul_batch, to_host_f64, Mode, ScoreModel, VeSde, VpSde};

use crate::error::{Error, Result};
use crate::loss::{check_like, reduce, train_mode, DynNoise, TrainingLoss};

/// Draws `b` integer labels uniformly from {0, …, n − 1} (`torch.randint(0, N, (B,))`) as an
/// `i64` tensor on the CPU: label = ⌊u n⌋ with u ~ U(0, 1) drawn in float64.
pub fn draw_labels<N: NoiseSource + ?Sized>(noise: &mut N, b: usize, n: usize) -> Result<Tensor> {
    let u = noise.rand_uniform(&b.into(), &Device::Cpu, DType::F64)?;
    let labels: Vec<i64> = to_host_f64(&u)?
        .iter()
        .map(|&u| ((u * n as f64) as i64).clamp(0, n.saturating_sub(1) as i64))
        .collect();
    Ok(Tensor::from_vec(labels, b, &Device::Cpu)?)
}

/// Host labels checked to lie in `[0, n)`.
fn label_indices(labels: &Tensor, b: usize, n: usize) -> Result<Vec<usize>> {
    if labels.dims() != [b] {
        return Err(Error::ShapeMismatch {
            what: "labels",
            expected: format!("[{b}]"),
            got: format!("{:?}", labels.dims()),
        });
    }
    to_host_f64(labels)?
        .into_iter()
        .map(|l| {
            if l >= 0.0 && l < n as f64 && l.fract() == 0.0 {
                Ok(l as usize)
            } else {
                Err(Error::InvalidParameter {
                    name: "labels",
                    value: l,
                    reason: "discrete labels must be integers in [0, N)",
                })
            }
        })
        .collect()
}

/// NCSN's noise-conditional loss over the discrete noise levels, mirrors
/// `losses.get_smld_loss_fn`:
///
/// L(θ) = E_i E_z [ σ_i² · R(‖s_θ(x + σ_i z, i) + z/σ_i‖²) ],  i ~ U{0, …, N − 1},
///
/// where σ_i is the *descending* list (label 0 = σ_max, the flip of
/// [`VeSde::discrete_sigmas`]) and the network receives the integer label i (`i64`).
/// R is the mean over data dims (`reduce_mean`) or ½ × the sum (the default, `false`).
#[doc(alias = "get_smld_loss_fn")]
#[derive(Debug, Clone)]
pub struct SmldLoss {
    sde: VeSde,
    /// Average over the data dims instead of ½ × the sum (default `false`).
    pub reduce_mean: bool,
    sigmas_desc: Vec<f64>,
}

impl SmldLoss {
    /// The loss for `sde`'s N noise levels.
    pub fn new(sde: &VeSde, reduce_mean: bool) -> Self {
        let mut sigmas_desc = sde.discrete_sigmas().to_vec();
        sigmas_desc.reverse();
        Self {
            sde: sde.clone(),
            reduce_mean,
            sigmas_desc,
        }
    }

    /// The SDE.
    pub fn sde(&self) -> &VeSde {
        &self.sde
    }

    /// Per-sample losses `[B]` for explicit draws: `labels: [B]` (integers in [0, N)) and
    /// `z ~ N(0, I)` shaped like the batch.
    pub fn per_sample_from_draws<M: ScoreModel + ?Sized>(
        &self,
        model: &M,
        batch: &Tensor,
        labels: &Tensor,
        z: &Tensor,
        mode: Mode<'_>,
    ) -> Result<Tensor> {
        check_like(batch, z, "noise z")?;
        let b = batch.dim(0)?;
        let idx = label_indices(labels, b, self.sigmas_desc.len())?;
        let sigmas = from_host_f64(
            idx.iter().map(|&i| self.sigmas_desc[i]).collect(),
            batch.device(),
            batch.dtype(),
        )?;
        let noise = mul_batch(&sigmas, z)?;
        let perturbed = (&noise + batch)?;
        let labels_i64 = Tensor::from_vec(
            idx.iter().map(|&i| i as i64).collect::<Vec<_>>(),
            b,
            batch.device(),
        )?;
        let score = model.forward_t(&perturbed, &labels_i64, mode)?;
        check_like(batch, &score, "model output")?;
        let s2 = sigmas.sqr()?;
        let target = noise
            .neg()?
            .broadcast_div(&sde_core::expand_batch(&s2, &noise)?)?;
        let r = (score - target)?.sqr()?;
        Ok((reduce(&r, self.reduce_mean)? * s2)?)
    }

    /// The batch loss for explicit draws (mean of the per-sample losses).
    pub fn loss_from_draws<M: ScoreModel + ?Sized>(
        &self,
        model: &M,
        batch: &Tensor,
        labels: &Tensor,
        z: &Tensor,
        mode: Mode<'_>,
    ) -> Result<Tensor> {
        Ok(self
            .per_sample_from_draws(model, batch, labels, z, mode)?
            .mean_all()?)
    }
}

impl TrainingLoss for SmldLoss {
    /// Draws the labels ([`draw_labels`]), then z ~ N(0, I) like the batch.
    fn loss<M: ScoreModel + ?Sized, N: NoiseSource + ?Sized>(
        &self,
        model: &M,
        batch: &Tensor,
        train: bool,
        noise: &mut N,
    ) -> Result<Tensor> {
        let labels = draw_labels(noise, batch.dim(0)?, self.sigmas_desc.len())?;
        let z = sde_core::noise::randn_like(batch, noise)?;
        let mut noise = DynNoise(noise);
        self.loss_from_draws(model, batch, &labels, &z, train_mode(train, &mut noise))
    }
}

/// DDPM's ε-prediction loss, mirrors `losses.get_ddpm_loss_fn`:
///
/// L(θ) = E_i E_z R(‖ε_θ(√ᾱ_i x + √(1 − ᾱ_i) z, i) − z‖²),  i ~ U{0, …, N − 1},
///
/// with ᾱ_i = `alphas_cumprod` of the [`VpSde`]. R is the mean over data dims (`reduce_mean`,
/// the default `true`) or ½ × the sum. The network receives the label i as a float of the
/// batch's dtype (the value t (N − 1) that [`sde_core::ScoreModelFn`] feeds when sampling).
#[doc(alias = "get_ddpm_loss_fn")]
#[derive(Debug, Clone)]
pub struct DdpmLoss {
    sde: VpSde,
    /// Average over the data dims instead of ½ × the sum (default `true`).
    pub reduce_mean: bool,
    sqrt_alphas_cumprod: Vec<f64>,
    sqrt_1m_alphas_cumprod: Vec<f64>,
}

impl DdpmLoss {
    /// The loss for `sde`'s discrete DDPM chain.
    pub fn new(sde: &VpSde, reduce_mean: bool) -> Self {
        Self {
            sde: sde.clone(),
            reduce_mean,
            sqrt_alphas_cumprod: sde.sqrt_alphas_cumprod(),
            sqrt_1m_alphas_cumprod: sde.sqrt_1m_alphas_cumprod(),
        }
    }

    /// The SDE.
    pub fn sde(&self) -> &VpSde {
        &self.sde
    }

    /// Per-sample losses `[B]` for explicit draws: `labels: [B]` (integers in [0, N)) and
    /// `z ~ N(0, I)` shaped like the batch.
    pub fn per_sample_from_draws<M: ScoreModel + ?Sized>(
        &self,
        model: &M,
        batch: &Tensor,
        labels: &Tensor,
        z: &Tensor,
        mode: Mode<'_>,
    ) -> Result<Tensor> {
        check_like(batch, z, "noise z")?;
        let b = batch.dim(0)?;
        let idx = label_indices(labels, b, self.sqrt_alphas_cumprod.len())?;
        let (dev, dt) = (batch.device(), batch.dtype());
        let a = from_host_f64(
            idx.iter().map(|&i| self.sqrt_alphas_cumprod[i]).collect(),
            dev,
            dt,
        )?;
        let s = from_host_f64(
            idx.iter()
                .map(|&i| self.sqrt_1m_alphas_cumprod[i])
                .collect(),
            dev,
            dt,
        )?;
        let perturbed = (mul_batch(&a, batch)? + mul_batch(&s, z)?)?;
        let labels_f = from_host_f64(idx.iter().map(|&i| i as f64).collect(), dev, dt)?;
        let eps = model.forward_t(&perturbed, &labels_f, mode)?;
        check_like(batch, &eps, "model output")?;
        let r = (eps - z)?.sqr()?;
        reduce(&r, self.reduce_mean)
    }

    /// The batch loss for explicit draws (mean of the per-sample losses).
    pub fn loss_from_draws<M: ScoreModel + ?Sized>(
        &self,
        model: &M,
        batch: &Tensor,
        labels: &Tensor,
        z: &Tensor,
        mode: Mode<'_>,
    ) -> Result<Tensor> {
        Ok(self
            .per_sample_from_draws(model, batch, labels, z, mode)?
            .mean_all()?)
    }
}

impl TrainingLoss for DdpmLoss {
    /// Draws the labels ([`draw_labels`]), then z ~ N(0, I) like the batch.
    fn loss<M: ScoreModel + ?Sized, N: NoiseSource + ?Sized>(
        &self,
        model: &M,
        batch: &Tensor,
        train: bool,
        noise: &mut N,
    ) -> Result<Tensor> {
        let labels = draw_labels(noise, batch.dim(0)?, self.sqrt_alphas_cumprod.len())?;
        let z = sde_core::noise::randn_like(batch, noise)?;
        let mut noise = DynNoise(noise);
        self.loss_from_draws(model, batch, &labels, &z, train_mode(train, &mut noise))
    }
}
