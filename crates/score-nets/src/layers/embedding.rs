//! Time / noise-level embeddings: sinusoidal (DDPM) and Gaussian Fourier features (NCSN++).

use candle_core::{DType, Tensor, D};
use candle_nn::{Init, VarBuilder};

use crate::{Error, Result};

/// Sinusoidal embedding of (float or integer) time labels, as `layers.get_timestep_embedding`:
/// $e(t) = [\sin(t f_0), \dots, \sin(t f_{h-1}), \cos(t f_0), \dots, \cos(t f_{h-1})]$ with
/// $h = \lfloor d/2 \rfloor$, $f_k = \exp(-k \ln(\mathrm{max\_positions}) / (h - 1))$ and
/// `max_positions = 10000`; zero-padded to `embedding_dim` when it is odd.
///
/// `timesteps: [B]` (any numeric dtype; cast to `f32` as the reference does) → `[B, embedding_dim]`
/// in `f32`. The frequencies are computed in `f32` on the host exactly as PyTorch does
/// (`exp(arange(h) * -ln(10000)/(h-1))`).
///
/// ```
/// use candle_core::{Device, Tensor};
/// let t = Tensor::new(&[0f32, 10.0], &Device::Cpu)?;
/// let e = score_nets::layers::get_timestep_embedding(&t, 8)?;
/// assert_eq!(e.dims(), &[2, 8]);
/// # Ok::<(), score_nets::Error>(())
/// ```
pub fn get_timestep_embedding(timesteps: &Tensor, embedding_dim: usize) -> Result<Tensor> {
    get_timestep_embedding_with(timesteps, embedding_dim, 10000.0)
}

/// [`get_timestep_embedding`] with an explicit `max_positions`.
pub fn get_timestep_embedding_with(
    timesteps: &Tensor,
    embedding_dim: usize,
    max_positions: f64,
) -> Result<Tensor> {
    if timesteps.rank() != 1 {
        return Err(Error::Input(format!(
            "timestep embedding expects labels of shape [B], got {:?}",
            timesteps.dims()
        )));
    }
    let half = embedding_dim / 2;
    if half < 2 {
        return Err(Error::Config(format!(
            "timestep embedding dimension must be at least 4, got {embedding_dim}"
        )));
    }
    if !(max_positions > 1.0 && max_positions.is_finite()) {
        return Err(Error::Config(format!(
            "max_positions must be finite and > 1, got {max_positions}"
        )));
    }
    let emb = (max_positions.ln() / (half as f64 - 1.0)) as f32;
    let freqs: Vec<f32> = (0..half).map(|k| (k as f32 * -emb).exp()).collect();
    let dev = timesteps.device();
    let freqs = Tensor::from_vec(freqs, (1, half), dev)?;
    let t = timesteps.to_dtype(DType::F32)?.unsqueeze(1)?;
    let arg = t.broadcast_mul(&freqs)?;
    let mut parts = vec![arg.sin()?, arg.cos()?];
    if embedding_dim % 2 == 1 {
        parts.push(Tensor::zeros((t.dim(0)?, 1), DType::F32, dev)?);
    }
    Ok(Tensor::cat(&parts, 1)?)
}

/// Gaussian Fourier feature embedding of the noise level (`layerspp.GaussianFourierProjection`,
/// Tancik et al. 2020): $e(x) = [\sin(2\pi W x), \cos(2\pi W x)]$, $W \sim \mathcal N(0, s^2 I)$
/// fixed (not trained; `s` = `fourier_scale`, 16 in the paper's NCSN++ configs).
///
/// NCSN++ feeds it $x = \log\sigma$. The argument is computed as `((x * W) * 2) * pi` in the
/// input dtype, the order of the reference, because with $|W| \sim 16$ the arguments are large and
/// this is where most of NCSN++'s float32 error comes from. Parameter: `W` of shape
/// `[embedding_size]`; the output has `2 * embedding_size` features.
#[derive(Debug, Clone)]
pub struct GaussianFourierProjection {
    w: Tensor,
}

impl GaussianFourierProjection {
    /// Creates or loads `W` (`vb.pp(..).get("W")`); a fresh `W` is drawn as `scale * N(0, 1)`.
    /// `W` is saved and loaded with the other weights but detached from autograd, so training
    /// never changes it (the reference sets `requires_grad = False`).
    pub fn new(embedding_size: usize, scale: f64, vb: VarBuilder) -> Result<Self> {
        if embedding_size == 0 {
            return Err(Error::Config("Fourier embedding size must be > 0".into()));
        }
        let w = vb
            .get_with_hints(
                embedding_size,
                "W",
                Init::Randn {
                    mean: 0.0,
                    stdev: scale,
                },
            )?
            .detach();
        Ok(Self { w })
    }

    /// Wraps an existing `W` of shape `[embedding_size]`.
    pub fn from_weight(w: Tensor) -> Result<Self> {
        if w.rank() != 1 {
            return Err(Error::Input(format!(
                "Fourier W must be 1-D, got {:?}",
                w.dims()
            )));
        }
        Ok(Self { w })
    }

    /// The fixed frequencies `W`.
    pub fn weight(&self) -> &Tensor {
        &self.w
    }

    /// `x: [B]` → `[B, 2 * embedding_size]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.rank() != 1 {
            return Err(Error::Input(format!(
                "Fourier projection expects [B], got {:?}",
                x.dims()
            )));
        }
        let w = self.w.to_dtype(x.dtype())?.unsqueeze(0)?;
        let proj = x.unsqueeze(1)?.broadcast_mul(&w)?;
        let proj = ((proj * 2.0)? * std::f64::consts::PI)?;
        Ok(Tensor::cat(&[proj.sin()?, proj.cos()?], D::Minus1)?)
    }
}
