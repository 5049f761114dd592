//! Small tensor helpers shared by the whole workspace: per-sample broadcasting, time tensors,
//! host copies and finiteness checks.

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// Builds the time tensor `[t, t, …, t]` of shape `[batch]` (every sample at the same time).
///
/// ```
/// use candle_core::{DType, Device};
/// let t = sde_core::time_tensor(0.5, 4, &Device::Cpu, DType::F32)?;
/// assert_eq!(t.dims(), &[4]);
/// # Ok::<(), sde_core::Error>(())
/// ```
pub fn time_tensor(t: f64, batch: usize, device: &Device, dtype: DType) -> Result<Tensor> {
    Ok(Tensor::full(t, batch, device)?.to_dtype(dtype)?)
}

/// Multiplies each sample of `x: [B, ...]` by the matching entry of `v: [B]`
/// (the reference's `v[:, None, None, None] * x`, for any number of trailing dims).
pub fn mul_batch(v: &Tensor, x: &Tensor) -> Result<Tensor> {
    Ok(x.broadcast_mul(&expand_batch(v, x)?)?)
}

/// Reshapes `v: [B]` to `[B, 1, …, 1]` with the rank of `x`, ready to broadcast against it.
pub fn expand_batch(v: &Tensor, x: &Tensor) -> Result<Tensor> {
    let b = x.dim(0)?;
    if v.dims() != [b] {
        return Err(Error::ShapeMismatch {
            what: "per-sample coefficient",
            expected: format!("[{b}]"),
            got: format!("{:?}", v.dims()),
        });
    }
    let mut shape = vec![1usize; x.rank()];
    shape[0] = b;
    Ok(v.to_dtype(x.dtype())?.reshape(shape)?)
}

/// Sums over every dimension but the first: `[B, ...] -> [B]`.
pub fn sum_non_batch(x: &Tensor) -> Result<Tensor> {
    Ok(x.flatten_from(1)?.sum(1)?)
}

/// Number of elements per sample (the product of all non-batch dims), `D` in the paper.
pub fn sample_numel(x: &Tensor) -> Result<usize> {
    Ok(x.dims().iter().skip(1).product())
}

/// Copies a tensor to the host as `f64`, flattened.
///
/// Contiguous float32 / float64 CPU tensors are read straight from their storage (one
/// allocation; samplers call this on per-sample times and coefficients at every step).
pub fn to_host_f64(x: &Tensor) -> Result<Vec<f64>> {
    if x.device().is_cpu() {
        let (storage, layout) = x.storage_and_layout();
        if let (candle_core::Storage::Cpu(cpu), Some((a, b))) =
            (&*storage, layout.contiguous_offsets())
        {
            match x.dtype() {
                DType::F32 => {
                    return Ok(cpu.as_slice::<f32>()?[a..b]
                        .iter()
                        .map(|&v| v as f64)
                        .collect())
                }
                DType::F64 => return Ok(cpu.as_slice::<f64>()?[a..b].to_vec()),
                _ => {}
            }
        }
    }
    Ok(x.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?)
}

/// Builds a `[len]` tensor of dtype `dtype` on `device` from host `f64` values.
pub fn from_host_f64(v: Vec<f64>, device: &Device, dtype: DType) -> Result<Tensor> {
    let n = v.len();
    Ok(Tensor::from_vec(v, n, &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(device)?)
}

/// Returns [`Error::NonFinite`] naming `what` if `x` holds a NaN or an infinity.
pub fn ensure_finite(x: &Tensor, what: impl FnOnce() -> String) -> Result<()> {
    // x * 0 is 0 for finite elements and NaN for NaN or ±inf: the sum is NaN iff one is.
    if x.elem_count() == 0 {
        return Ok(());
    }
    let s = x
        .flatten_all()?
        .to_dtype(DType::F32)?
        .affine(0.0, 0.0)?
        .sum_all()?
        .to_scalar::<f32>()?;
    if s.is_finite() {
        Ok(())
    } else {
        Err(Error::NonFinite { what: what() })
    }
}

/// Checks that `t` has shape `[x.dim(0)]`, and returns its host values.
pub fn check_time(x: &Tensor, t: &Tensor, t_end: f64) -> Result<Vec<f64>> {
    let b = x.dim(0)?;
    if t.dims() != [b] {
        return Err(Error::TimeShape {
            batch: b,
            got: t.shape().clone(),
        });
    }
    let host = to_host_f64(t)?;
    check_time_values(&host, t_end)?;
    Ok(host)
}

/// Checks that every time lies in `[0, T]` and is finite.
pub fn check_time_values(t: &[f64], t_end: f64) -> Result<()> {
    for (index, &ti) in t.iter().enumerate() {
        // A float32 time grid may land a hair above T: accept one float32 ulp.
        if !(ti.is_finite() && ti >= 0.0 && ti <= t_end * (1.0 + 1.2e-7)) {
            return Err(Error::TimeOutOfRange {
                t: ti,
                index,
                t_end,
            });
        }
    }
    Ok(())
}
