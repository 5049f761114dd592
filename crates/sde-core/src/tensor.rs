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
///
/// `dtype` must be a float dtype ([`Error::DType`] otherwise: an integer time grid would round
/// every time to 0 or 1).
pub fn time_tensor(t: f64, batch: usize, device: &Device, dtype: DType) -> Result<Tensor> {
    check_float_dtype("time_tensor", "dtype", dtype)?;
    Ok(match dtype {
        // One allocation: filled in the target dtype (rounded as `to_dtype` rounds).
        DType::F32 => Tensor::full(t as f32, batch, device)?,
        DType::F64 => Tensor::full(t, batch, device)?,
        _ => Tensor::full(t, batch, device)?.to_dtype(dtype)?,
    })
}

/// `Some(v)` when every element of the contiguous float32 / float64 CPU tensor `t` has the bits
/// of `v` (a sampler's shared time, a per-sample coefficient of such a time), read in place with
/// one vectorised comparison; `None` otherwise, and for empty, strided, other-dtype or
/// accelerator tensors (callers then read the values one by one).
///
/// ```
/// use candle_core::{Device, Tensor};
/// let t = Tensor::full(0.25f32, 4, &Device::Cpu)?;
/// assert_eq!(sde_core::constant_value(&t)?, Some(0.25));
/// let u = Tensor::new(&[0.25f32, 0.5], &Device::Cpu)?;
/// assert_eq!(sde_core::constant_value(&u)?, None);
/// # Ok::<(), sde_core::Error>(())
/// ```
pub fn constant_value(t: &Tensor) -> Result<Option<f64>> {
    fn same<T: Copy>(s: &[T], bits: impl Fn(T) -> u64) -> Option<T> {
        let first = *s.first()?;
        let b0 = bits(first);
        // A fold without early exit: the compiler vectorises it.
        s.iter()
            .fold(true, |ok, &v| ok & (bits(v) == b0))
            .then_some(first)
    }
    if !t.device().is_cpu() {
        return Ok(None);
    }
    let (storage, layout) = t.storage_and_layout();
    let (candle_core::Storage::Cpu(cpu), Some((a, b))) = (&*storage, layout.contiguous_offsets())
    else {
        return Ok(None);
    };
    Ok(match t.dtype() {
        DType::F32 => same(&cpu.as_slice::<f32>()?[a..b], |v| v.to_bits() as u64).map(f64::from),
        DType::F64 => same(&cpu.as_slice::<f64>()?[a..b], f64::to_bits),
        _ => None,
    })
}

/// Host values of a per-sample `[B]` quantity, kept as one value when every sample has the same
/// one. Samplers pass one time for the whole batch, so per-sample coefficients are then computed
/// once and broadcast instead of once per sample.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PerSample<T> {
    /// The same value for all `B` samples: `Same(value, B)`.
    Same(T, usize),
    /// One value per sample.
    Each(Vec<T>),
}

impl PerSample<f64> {
    /// The host values of `t: [B]`, not validated. Contiguous float32 / float64 CPU tensors are
    /// read in place (one vectorised comparison decides whether all values are equal).
    pub(crate) fn read(t: &Tensor) -> Result<Self> {
        Ok(match constant_value(t)? {
            Some(v) => Self::Same(v, t.elem_count()),
            None => Self::Each(to_host_f64(t)?),
        })
    }

    /// The times `t` for `x` ([`check_time`]'s checks: shape `[x.dim(0)]`, finite, in
    /// `[0, T]`).
    #[cfg(test)]
    pub(crate) fn times(x: &Tensor, t: &Tensor, t_end: f64) -> Result<Self> {
        Self::times_in("Sde", x, t, t_end)
    }

    /// [`times`](Self::times), with errors naming the calling function `func`.
    pub(crate) fn times_in(func: &'static str, x: &Tensor, t: &Tensor, t_end: f64) -> Result<Self> {
        check_time_args(func, x, t)?;
        let v = Self::read(t)?;
        match &v {
            Self::Same(ti, _) => check_time_values(std::slice::from_ref(ti), t_end)?,
            Self::Each(host) => check_time_values(host, t_end)?,
        }
        Ok(v)
    }

    /// A `[B]` tensor of these values on `device` in `dtype`.
    pub(crate) fn tensor(&self, device: &Device, dtype: DType) -> Result<Tensor> {
        match self {
            Self::Same(v, b) => time_tensor(*v, *b, device, dtype),
            Self::Each(v) => from_host_f64(v.clone(), device, dtype),
        }
    }
}

impl<T: Copy + PartialEq> PerSample<T> {
    /// `f` of every value, evaluated once per run of equal values.
    pub(crate) fn map<U: Copy>(&self, f: impl Fn(T) -> U) -> PerSample<U> {
        match self {
            Self::Same(v, b) => PerSample::Same(f(*v), *b),
            Self::Each(v) => {
                let mut last: Option<(T, U)> = None;
                PerSample::Each(
                    v.iter()
                        .map(|&vi| match last {
                            Some((vl, u)) if vl == vi => u,
                            _ => {
                                let u = f(vi);
                                last = Some((vi, u));
                                u
                            }
                        })
                        .collect(),
                )
            }
        }
    }
}

impl<A: Copy, B: Copy> PerSample<(A, B)> {
    /// Two per-sample quantities from pairs.
    pub(crate) fn unzip(self) -> (PerSample<A>, PerSample<B>) {
        match self {
            Self::Same((a, b), n) => (PerSample::Same(a, n), PerSample::Same(b, n)),
            Self::Each(v) => {
                let (a, b) = v.into_iter().unzip();
                (PerSample::Each(a), PerSample::Each(b))
            }
        }
    }
}

/// Multiplies each sample of `x: [B, ...]` by the matching entry of `v: [B]`
/// (the reference's `v[:, None, None, None] * x`, for any number of trailing dims).
pub fn mul_batch(v: &Tensor, x: &Tensor) -> Result<Tensor> {
    Ok(x.broadcast_mul(&expand_batch(v, x)?)?)
}

/// Reshapes `v: [B]` to `[B, 1, …, 1]` with the rank of `x`, ready to broadcast against it.
pub fn expand_batch(v: &Tensor, x: &Tensor) -> Result<Tensor> {
    let b = batch_size("expand_batch", "x", x)?;
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
///
/// A rank-1 `x: [B]` (one scalar per sample) is returned as it is; a zero-size sample
/// (`[B, 0]`) sums to 0. Rank 0 is an [`Error::Rank`].
pub fn sum_non_batch(x: &Tensor) -> Result<Tensor> {
    batch_size("sum_non_batch", "x", x)?;
    if x.rank() == 1 {
        return Ok(x.clone());
    }
    Ok(x.flatten_from(1)?.sum(1)?)
}

/// Number of elements per sample (the product of all non-batch dims), `D` in the paper:
/// 1 for a rank-1 `[B]`, 0 for a zero-size sample; rank 0 is an [`Error::Rank`].
pub fn sample_numel(x: &Tensor) -> Result<usize> {
    batch_size("sample_numel", "x", x)?;
    Ok(x.dims().iter().skip(1).product())
}

/// What every float check asks for.
const FLOAT: &str = "a float tensor (f16, bf16, f32 or f64)";

/// [`Error::DType`] naming `func` and `arg` unless `x` has a float dtype (f16, bf16, f32,
/// f64): integer tensors would make coefficients be computed and truncated in the integer dtype.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// let t = Tensor::zeros(4, DType::I64, &Device::Cpu)?;
/// assert!(matches!(
///     sde_core::check_float("VpSde::marginal_prob", "t", &t),
///     Err(sde_core::Error::DType { arg: "t", got: DType::I64, .. })
/// ));
/// # Ok::<(), sde_core::Error>(())
/// ```
pub fn check_float(func: &'static str, arg: &'static str, x: &Tensor) -> Result<()> {
    check_float_dtype(func, arg, x.dtype())
}

/// [`check_float`] of a dtype.
pub(crate) fn check_float_dtype(func: &'static str, arg: &'static str, dtype: DType) -> Result<()> {
    match dtype {
        DType::F16 | DType::BF16 | DType::F32 | DType::F64 => Ok(()),
        got => Err(Error::DType {
            func,
            arg,
            expected: FLOAT,
            got,
        }),
    }
}

/// The batch size `B` of a batched `x: [B, ...]`; [`Error::Rank`] naming `func` and `arg` for
/// a rank-0 tensor.
pub fn batch_size(func: &'static str, arg: &'static str, x: &Tensor) -> Result<usize> {
    match x.dims().first() {
        Some(&b) => Ok(b),
        None => Err(Error::Rank {
            func,
            arg,
            expected: "≥ 1 ([B, ...])",
            got: x.shape().clone(),
        }),
    }
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

/// Checks that `x: [B, ...]` and `t: [B]` are float tensors and every time is finite and in
/// `[0, T]`, and returns the host values of `t`.
pub fn check_time(x: &Tensor, t: &Tensor, t_end: f64) -> Result<Vec<f64>> {
    check_time_in("check_time", x, t, t_end)
}

/// [`check_time`] with errors naming the calling function `func`.
pub fn check_time_in(func: &'static str, x: &Tensor, t: &Tensor, t_end: f64) -> Result<Vec<f64>> {
    check_time_args(func, x, t)?;
    let host = to_host_f64(t)?;
    check_time_values(&host, t_end)?;
    Ok(host)
}

/// The checks of `(x, t)` before their values: `x` batched, both float, `t: [B]`
/// ([`Error::Rank`], [`Error::DType`], [`Error::TimeShape`]).
fn check_time_args(func: &'static str, x: &Tensor, t: &Tensor) -> Result<()> {
    let b = batch_size(func, "x", x)?;
    check_float(func, "t", t)?;
    check_float(func, "x", x)?;
    if t.dims() != [b] {
        return Err(Error::TimeShape {
            batch: b,
            got: t.shape().clone(),
        });
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A constant time tensor is read as one value, a varying one per sample; both give the same
    /// coefficient tensors as the per-sample formula.
    #[test]
    fn per_sample_times_collapse_only_when_constant() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::zeros((4, 2), DType::F32, &dev)?;
        let same = time_tensor(0.25, 4, &dev, DType::F32)?;
        let varying = Tensor::new(&[0.25f32, 0.25, 0.5, 0.25], &dev)?;
        let f = |t: f64| (t * 3.0).exp();
        for (t, constant) in [(&same, true), (&varying, false)] {
            for dtype in [DType::F32, DType::F64] {
                let t = t.to_dtype(dtype)?;
                let host = PerSample::times(&x, &t, 1.0)?;
                assert_eq!(matches!(host, PerSample::Same(..)), constant);
                let got = to_host_f64(&host.map(f).tensor(&dev, dtype)?)?;
                let want = to_host_f64(&from_host_f64(
                    to_host_f64(&t)?.into_iter().map(f).collect(),
                    &dev,
                    dtype,
                )?)?;
                assert_eq!(got, want);
            }
        }
        // a strided view and an empty batch
        let view = Tensor::new(&[[0.5f32, 0.1], [0.5, 0.2]], &dev)?.narrow(1, 0, 1)?;
        let view = view.squeeze(1)?;
        assert_eq!(PerSample::read(&view)?, PerSample::Each(vec![0.5, 0.5]));
        let empty = Tensor::zeros(0, DType::F32, &dev)?;
        assert_eq!(PerSample::read(&empty)?, PerSample::Each(vec![]));
        // validation still names the bad time
        let bad = Tensor::new(&[0.25f32, 2.0, 0.25, 0.25], &dev)?;
        assert!(matches!(
            PerSample::times(&x, &bad, 1.0),
            Err(Error::TimeOutOfRange { index: 1, .. })
        ));
        let nan = time_tensor(f64::NAN, 4, &dev, DType::F32)?;
        assert!(PerSample::times(&x, &nan, 1.0).is_err());
        Ok(())
    }
}
