//! Dropout from the caller's noise source.
//!
//! `candle_nn::Dropout` draws its mask with `Tensor::rand`, which is unseeded on the CPU. Blocks
//! here draw the mask from the [`NoiseSource`] of [`sde_core::Mode::Train`] instead, so a
//! training step is a function of the caller's (checkpointed) generator.

use candle_core::Tensor;
use sde_core::noise::NoiseSource;

use crate::{Error, Result};

/// Inverted dropout (`nn.Dropout(p)` in training mode): each element is zeroed with probability
/// `p` and the survivors are scaled by $1/(1-p)$; the mask is $\mathbb 1[u \ge p]$ with
/// $u \sim U[0,1)$ drawn from `rng` (one `rand_uniform` of `x`'s shape). Identity, drawing
/// nothing, when `rng` is `None` (evaluation) or `p == 0`.
pub fn dropout(x: &Tensor, p: f64, rng: Option<&mut dyn NoiseSource>) -> Result<Tensor> {
    let Some(rng) = rng else {
        return Ok(x.clone());
    };
    if p == 0.0 {
        return Ok(x.clone());
    }
    if !(0.0..1.0).contains(&p) {
        return Err(Error::Config(format!("dropout must be in [0, 1), got {p}")));
    }
    let u = rng.rand_uniform(x.shape(), x.device(), x.dtype())?;
    let mask = u.ge(p)?.to_dtype(x.dtype())?.affine(1.0 / (1.0 - p), 0.0)?;
    Ok(x.mul(&mask)?)
}
