//! Data transforms of the reference (`datasets.get_data_scaler`, `get_data_inverse_scaler`,
//! random flips) and uniform dequantisation.

use candle_core::{DType, Tensor};
use rand::{Rng, RngCore};
use sde_core::noise::NoiseSource;

use crate::error::{Error, Result};

/// [`Error::ShapeMismatch`] naming `func` unless `x` has a float dtype: the affine maps below
/// would truncate in an integer dtype.
fn check_float(func: &'static str, x: &Tensor) -> Result<()> {
    if x.dtype().is_float() {
        Ok(())
    } else {
        Err(Error::ShapeMismatch {
            what: func,
            expected: "a float tensor (f16, bf16, f32 or f64)".into(),
            got: format!("dtype {:?}", x.dtype()),
        })
    }
}

/// The data scaler (`datasets.get_data_scaler`): x ∈ [0, 1] ↦ 2x − 1 when `centered`, else x.
/// `x` must be a float tensor.
#[doc(alias = "get_data_scaler")]
pub fn scaler(x: &Tensor, centered: bool) -> Result<Tensor> {
    check_float("scaler input x", x)?;
    Ok(if centered {
        x.affine(2.0, -1.0)?
    } else {
        x.clone()
    })
}

/// The inverse scaler (`datasets.get_data_inverse_scaler`): x ↦ (x + 1)/2 when `centered`,
/// else x. `x` must be a float tensor.
#[doc(alias = "get_data_inverse_scaler")]
pub fn inverse_scaler(x: &Tensor, centered: bool) -> Result<Tensor> {
    check_float("inverse_scaler input x", x)?;
    Ok(if centered {
        x.affine(0.5, 0.5)?
    } else {
        x.clone()
    })
}

/// Uniform dequantisation of 8-bit data in [0, 1] (Theis et al. 2016), the reference's
/// `uniform_dequantization` (`run_lib.evaluate`): x ↦ (255 x + u)/256, u ~ U(0, 1)
/// elementwise, so that a continuous density's log-likelihood bounds the discrete one (used for
/// bits/dim evaluation). `x` must be a float tensor with every value finite and in [0, 1]
/// (otherwise [`Error::InvalidParameter`] naming `x`: the result would leave [0, 1]). For other
/// bit depths and ranges, with rounding to the levels, see
/// `sde_solvers::likelihood::dequantize_levels`.
#[doc(alias = "uniform_dequantization")]
pub fn uniform_dequantize<N: NoiseSource + ?Sized>(x: &Tensor, noise: &mut N) -> Result<Tensor> {
    check_float("uniform_dequantize input x", x)?;
    if x.elem_count() > 0 {
        let lo = x.min_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let hi = x.max_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        // NaN fails both comparisons (and candle's min/max propagate it or skip it: check both)
        let finite = sde_core::ensure_finite(x, String::new).is_ok();
        if !(finite && lo >= 0.0 && hi <= 1.0) {
            return Err(Error::InvalidParameter {
                name: "x",
                value: if !finite {
                    f64::NAN
                } else if lo < 0.0 {
                    lo
                } else {
                    hi
                },
                reason: "uniform_dequantize needs finite data in [0, 1]",
            });
        }
    }
    let u = noise.rand_uniform(x.shape(), x.device(), x.dtype())?;
    Ok((x.affine(255.0, 0.0)? + u)?.affine(1.0 / 256.0, 0.0)?)
}

/// Mirrors each image of `x: [B, C, H, W]` horizontally (along W) with probability ½,
/// one Bernoulli draw per image (`tf.image.random_flip_left_right`).
pub fn random_flip(x: &Tensor, rng: &mut dyn RngCore) -> Result<Tensor> {
    if x.rank() != 4 {
        return Err(Error::ShapeMismatch {
            what: "random_flip input",
            expected: "[B, C, H, W]".into(),
            got: format!("{:?}", x.dims()),
        });
    }
    let (b, _, _, w) = x.dims4()?;
    let rev: Vec<u32> = (0..w as u32).rev().collect();
    let rev = Tensor::from_vec(rev, w, x.device())?;
    let flipped = x.index_select(&rev, 3)?;
    let mask: Vec<f32> = (0..b)
        .map(|_| if rng.random::<bool>() { 1.0 } else { 0.0 })
        .collect();
    let mask = Tensor::from_vec(mask, (b, 1, 1, 1), x.device())?.to_dtype(DType::U8)?;
    Ok(mask.broadcast_as(x.shape())?.where_cond(&flipped, x)?)
}
