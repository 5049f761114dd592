//! Fused element-wise kernels shared by the built-in predictors and correctors.
//!
//! The update rules are a handful of flops per element, so on the CPU the cost of one candle op
//! per term (an allocation and a pass over memory each) dominates. For contiguous CPU tensors
//! of dtype f32 or f64 these helpers compute a whole update in one pass; for anything else
//! (accelerators, other dtypes, strided views) they fall back to the equivalent tensor ops.

use candle_core::{DType, Storage, Tensor, WithDType};
use sde_core::{mul_batch, to_host_f64};

use crate::error::Result;
use crate::predictor::Update;

/// The contiguous host slice of a CPU tensor of dtype `T`, from its locked storage and layout
/// (`Tensor::storage_and_layout`).
fn slice_of<'g, T: WithDType, G: std::ops::Deref<Target = Storage>>(
    locked: &'g (G, &candle_core::Layout),
) -> Option<&'g [T]> {
    let (start, end) = locked.1.contiguous_offsets()?;
    match &*locked.0 {
        Storage::Cpu(cpu) => cpu.as_slice::<T>().ok()?.get(start..end),
        _ => None,
    }
}

/// Runs `f` on the contiguous host slice of `t` when it is a CPU tensor of dtype `T`.
fn with_slice<T: WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> R) -> Option<R> {
    slice_of::<T, _>(&t.storage_and_layout()).map(f)
}

/// Host copy of a per-sample coefficient `[B]` (f64).
pub(crate) fn per_sample(v: &Tensor) -> Result<Vec<f64>> {
    if let Some(v) = with_slice::<f32, _>(v, |s| s.iter().map(|&x| x as f64).collect()) {
        return Ok(v);
    }
    if let Some(v) = with_slice::<f64, _>(v, |s| s.to_vec()) {
        return Ok(v);
    }
    Ok(to_host_f64(v)?)
}

/// A per-sample coefficient: one value per sample, or one value for the whole batch.
#[derive(Debug, Clone)]
pub(crate) enum Coeff {
    Same(f64),
    PerSample(Vec<f64>),
}

impl Coeff {
    /// A per-sample coefficient tensor `[B]`; a constant one (a sampler's shared time) is read
    /// as [`Coeff::Same`] without copying it.
    pub(crate) fn of(v: &Tensor) -> Result<Self> {
        Ok(match sde_core::constant_value(v)? {
            Some(c) => Coeff::Same(c),
            None => Self::from_vec(per_sample(v)?),
        })
    }

    /// From host values, collapsing a constant vector to [`Coeff::Same`].
    pub(crate) fn from_vec(v: Vec<f64>) -> Self {
        match v.first() {
            Some(&c) if v.iter().all(|&x| x == c) => Coeff::Same(c),
            _ => Coeff::PerSample(v),
        }
    }
    pub(crate) fn map(&self, f: impl Fn(f64) -> f64) -> Self {
        match self {
            Coeff::Same(c) => Coeff::Same(f(*c)),
            Coeff::PerSample(v) => Coeff::PerSample(v.iter().map(|&c| f(c)).collect()),
        }
    }
    fn tensor(&self, like: &Tensor) -> Result<Tensor> {
        let b = like.dim(0)?;
        let v = match self {
            Coeff::Same(c) => vec![*c; b],
            Coeff::PerSample(v) => v.clone(),
        };
        Ok(sde_core::from_host_f64(v, like.device(), like.dtype())?)
    }
    fn at(&self, b: usize) -> f64 {
        match self {
            Coeff::Same(c) => *c,
            Coeff::PerSample(v) => v.get(b).copied().unwrap_or(f64::NAN),
        }
    }
}

/// x̄ = x + α f + a ⊙ s,  x' = x̄ + c ⊙ z (per-sample a, c; `z = None` gives x' = x̄).
pub(crate) struct Terms<'a> {
    pub x: &'a Tensor,
    pub f: Option<(&'a Tensor, f64)>,
    pub s: Option<(&'a Tensor, &'a Coeff)>,
    pub z: Option<(&'a Tensor, &'a Coeff)>,
}

impl Terms<'_> {
    /// One fused pass when every tensor is contiguous on the CPU with the same dtype and
    /// shape; the equivalent tensor ops otherwise.
    pub(crate) fn apply(&self) -> Result<Update> {
        let x = self.x;
        let same = |t: &Tensor| t.shape() == x.shape() && t.dtype() == x.dtype();
        let ok = self.f.is_none_or(|(f, _)| same(f))
            && self.s.is_none_or(|(s, _)| same(s))
            && self.z.is_none_or(|(z, _)| same(z));
        if ok && x.device().is_cpu() && x.rank() >= 1 {
            let out = match x.dtype() {
                DType::F32 => self.fused::<f32>()?,
                DType::F64 => self.fused::<f64>()?,
                _ => None,
            };
            if let Some(u) = out {
                return Ok(u);
            }
        }
        self.ops()
    }

    /// The tensor-op version (any device and dtype).
    pub(crate) fn ops(&self) -> Result<Update> {
        let mut xm = self.x.clone();
        if let Some((f, alpha)) = self.f {
            xm = (xm + f.affine(alpha, 0.0)?)?;
        }
        if let Some((s, a)) = self.s {
            xm = (xm + mul_batch(&a.tensor(self.x)?, s)?)?;
        }
        let xn = match self.z {
            Some((z, c)) => (&xm + mul_batch(&c.tensor(self.x)?, z)?)?,
            None => xm.clone(),
        };
        Ok(Update { x: xn, x_mean: xm })
    }

    fn fused<T: WithDType>(&self) -> Result<Option<Update>> {
        let same = |c: Option<&Coeff>| match c {
            None => Some(0.0),
            Some(Coeff::Same(v)) => Some(*v),
            Some(Coeff::PerSample(_)) => None,
        };
        let (Some(a), Some(c)) = (same(self.s.map(|(_, c)| c)), same(self.z.map(|(_, c)| c)))
        else {
            return self.fused_per_sample::<T>();
        };
        // Shared coefficients (a sampler step): two passes, no zero-filled or copied buffers.
        let (alpha, a, c) = (
            T::from_f64(self.f.map_or(0.0, |(_, al)| al)),
            T::from_f64(a),
            T::from_f64(c),
        );
        let gx = self.x.storage_and_layout();
        let gf = self.f.map(|(f, _)| f.storage_and_layout());
        let gs = self.s.map(|(s, _)| s.storage_and_layout());
        let gz = self.z.map(|(z, _)| z.storage_and_layout());
        let Some(xs) = slice_of::<T, _>(&gx) else {
            return Ok(None);
        };
        // `Some(None)`: the tensor is there but not a contiguous host slice of dtype T.
        let (fs, ss, zs) = (
            gf.as_ref().map(slice_of::<T, _>),
            gs.as_ref().map(slice_of::<T, _>),
            gz.as_ref().map(slice_of::<T, _>),
        );
        if [fs, ss, zs].contains(&Some(None)) {
            return Ok(None);
        }
        let xm: Vec<T> = match (fs.flatten(), ss.flatten()) {
            (Some(f), Some(s)) => xs
                .iter()
                .zip(f)
                .zip(s)
                .map(|((&x, &f), &s)| x + alpha * f + a * s)
                .collect(),
            (Some(f), None) => xs.iter().zip(f).map(|(&x, &f)| x + alpha * f).collect(),
            (None, Some(s)) => xs.iter().zip(s).map(|(&x, &s)| x + a * s).collect(),
            (None, None) => xs.to_vec(),
        };
        let xn: Option<Vec<T>> = zs
            .flatten()
            .map(|z| xm.iter().zip(z).map(|(&m, &z)| m + c * z).collect());
        self.update(xm, xn).map(Some)
    }

    /// The update from host values of x̄ and x (x = x̄ without noise), shaped as `x`.
    fn update<T: WithDType>(&self, xm: Vec<T>, xn: Option<Vec<T>>) -> Result<Update> {
        let shape = self.x.shape().clone();
        let dev = self.x.device();
        let x_mean = Tensor::from_vec(xm, shape.clone(), dev)?;
        let x = match xn {
            Some(v) => Tensor::from_vec(v, shape, dev)?,
            None => x_mean.clone(),
        };
        Ok(Update { x, x_mean })
    }

    /// [`fused`](Self::fused) with per-sample coefficients.
    fn fused_per_sample<T: WithDType>(&self) -> Result<Option<Update>> {
        let b = self.x.dim(0)?;
        let n = self.x.elem_count();
        let d = n.checked_div(b).unwrap_or(0);
        let mut xm: Vec<T> = match with_slice::<T, _>(self.x, |s| s.to_vec()) {
            Some(v) => v,
            None => return Ok(None),
        };
        if let Some((f, alpha)) = self.f {
            let a = T::from_f64(alpha);
            let done = with_slice::<T, _>(f, |fs| {
                xm.iter_mut().zip(fs).for_each(|(x, &f)| *x += a * f);
            });
            if done.is_none() {
                return Ok(None);
            }
        }
        if let Some((s, coef)) = self.s {
            let done = with_slice::<T, _>(s, |ss| axpy(&mut xm, ss, coef, d));
            if done.is_none() {
                return Ok(None);
            }
        }
        let xn = match self.z {
            Some((z, coef)) => {
                let mut xn = xm.clone();
                if with_slice::<T, _>(z, |zs| axpy(&mut xn, zs, coef, d)).is_none() {
                    return Ok(None);
                }
                Some(xn)
            }
            None => None,
        };
        self.update(xm, xn).map(Some)
    }
}

/// y += c_b · v for every element of sample b (`d` elements per sample).
fn axpy<T: WithDType>(y: &mut [T], v: &[T], c: &Coeff, d: usize) {
    match c {
        Coeff::Same(c) => {
            let c = T::from_f64(*c);
            y.iter_mut().zip(v).for_each(|(y, &v)| *y += c * v);
        }
        Coeff::PerSample(_) => {
            if d == 0 {
                return;
            }
            for (bi, (yc, vc)) in y.chunks_mut(d).zip(v.chunks(d)).enumerate() {
                let c = T::from_f64(c.at(bi));
                yc.iter_mut().zip(vc).for_each(|(y, &v)| *y += c * v);
            }
        }
    }
}

/// Batch mean of the per-sample L2 norms, (1/B) Σ_b ‖v_b‖₂ (one pass on the CPU).
pub(crate) fn mean_norm(v: &Tensor) -> Result<f64> {
    let b = v.dim(0)?;
    let d = v.elem_count().checked_div(b).unwrap_or(0);
    fn host<T: WithDType>(s: &[T], b: usize, d: usize) -> f64 {
        if d == 0 {
            return 0.0;
        }
        // Eight independent partial sums keep the reduction off one dependency chain.
        let mut acc = [0.0f64; 8];
        for (i, c) in s.chunks_exact(d).enumerate() {
            let sq: f64 = c.iter().map(|&x| x.to_f64() * x.to_f64()).sum();
            acc[i % 8] += sq.sqrt();
        }
        acc.iter().sum::<f64>() / b as f64
    }
    /// f32, two elements per sample (2-D points): eight points per iteration in fixed lanes, a
    /// branch-free loop the compiler vectorizes (de-interleaving with shuffles), summed in f64
    /// per block of 1024 points.
    fn host_f32_d2(s: &[f32], b: usize) -> f64 {
        let mut total = 0.0f64;
        for blk in s.chunks(2 * 1024) {
            let mut part = [0.0f32; 8];
            let mut eights = blk.chunks_exact(16);
            for q in &mut eights {
                for (j, p) in part.iter_mut().enumerate() {
                    let (u, v) = (q[2 * j], q[2 * j + 1]);
                    *p += (u * u + v * v).sqrt();
                }
            }
            let tail: f32 = eights
                .remainder()
                .chunks_exact(2)
                .map(|c| (c[0] * c[0] + c[1] * c[1]).sqrt())
                .sum();
            total += part.iter().map(|&p| p as f64).sum::<f64>() + tail as f64;
        }
        total / b as f64
    }
    if b > 0 {
        if d == 2 {
            if let Some(m) = with_slice::<f32, _>(v, |s| host_f32_d2(s, b)) {
                return Ok(m);
            }
        }
        if let Some(m) = with_slice::<f32, _>(v, |s| host(s, b, d)) {
            return Ok(m);
        }
        if let Some(m) = with_slice::<f64, _>(v, |s| host(s, b, d)) {
            return Ok(m);
        }
    }
    let n = v
        .flatten_from(1)?
        .sqr()?
        .sum(1)?
        .sqrt()?
        .sum_all()?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?;
    Ok(n / b.max(1) as f64)
}

/// Whether every element of `x` is finite (one pass on the CPU, tensor ops elsewhere).
pub(crate) fn all_finite(x: &Tensor) -> Result<bool> {
    // 0·v is 0 for finite v and NaN otherwise; the sum of those is NaN iff one is. Written as
    // a fold without early exit over lanes of eight, so the compiler vectorises it.
    fn host<T: WithDType>(s: &[T]) -> bool {
        let zero = T::zero();
        let mut acc = [zero; 8];
        let mut chunks = s.chunks_exact(8);
        for c in &mut chunks {
            for (a, &v) in acc.iter_mut().zip(c) {
                *a += zero * v;
            }
        }
        let tail = chunks.remainder().iter().fold(zero, |a, &v| a + zero * v);
        acc.iter().fold(tail, |a, &v| a + v).to_f64() == 0.0
    }
    if let Some(ok) = with_slice::<f32, _>(x, host) {
        return Ok(ok);
    }
    if let Some(ok) = with_slice::<f64, _>(x, host) {
        return Ok(ok);
    }
    match sde_core::ensure_finite(x, String::new) {
        Ok(()) => Ok(true),
        Err(sde_core::Error::NonFinite { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The fused pass and the tensor ops agree, with per-sample and shared coefficients.
    #[test]
    fn fused_matches_ops() -> Result<()> {
        let dev = Device::Cpu;
        for dtype in [DType::F32, DType::F64] {
            let x = Tensor::arange(0f32, 12.0, &dev)?
                .reshape((3, 4))?
                .to_dtype(dtype)?;
            let f = x.sqr()?.affine(0.1, 0.0)?;
            let s = x.affine(-0.5, 1.0)?;
            let z = x.cos()?;
            let a = Coeff::from_vec(vec![0.5, 1.5, -2.0]);
            let c = Coeff::from_vec(vec![0.25, 0.25, 0.25]);
            assert!(matches!(c, Coeff::Same(_)));
            let t = Terms {
                x: &x,
                f: Some((&f, -0.3)),
                s: Some((&s, &a)),
                z: Some((&z, &c)),
            };
            let (u1, u2) = (t.apply()?, t.ops()?);
            for (p, q) in [(&u1.x, &u2.x), (&u1.x_mean, &u2.x_mean)] {
                let d = (p - q)?
                    .abs()?
                    .max_all()?
                    .to_dtype(DType::F64)?
                    .to_scalar::<f64>()?;
                assert!(d < 1e-5, "{d}");
            }
            assert!(
                (mean_norm(&s)? - {
                    let v = to_host_f64(&s)?;
                    v.chunks(4)
                        .map(|c| c.iter().map(|x| x * x).sum::<f64>().sqrt())
                        .sum::<f64>()
                        / 3.0
                })
                .abs()
                    < 1e-9
            );
            assert!(all_finite(&x)?);
            assert!(!all_finite(&(x.affine(1.0, 0.0)? / 0.0)?)?);
        }
        Ok(())
    }
}
