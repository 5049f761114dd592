//! FIR up/down-sampling (`models/up_or_down_sampling.py`, from StyleGAN2) with plain Candle ops.
//!
//! The reference calls a JIT-compiled CUDA `upfirdn2d` op. Here the same operation is written as
//! zero insertion, zero padding (or cropping), a separable FIR filter computed as a sum of shifted
//! slices, and subsampling, so it runs (and differentiates) on every Candle backend.
//!
//! All FIR kernels of the reference are separable: a 1-D kernel `k` becomes
//! $K = k k^\top / (\sum k)^2$ (`_setup_kernel`), which sums to 1; upsampling multiplies it by
//! `factor^2` so that a constant image stays constant ("gain").

use candle_core::{DType, Tensor, D};

use crate::{Error, Result};
use sde_kernels::fir::UpFirDn;
use sde_kernels::float::Float;

/// The normalised 1-D factor of a FIR kernel: $k / \sum k$, so that the 2-D kernel
/// $K = \hat k \hat k^\top$ equals `_setup_kernel(k)` and sums to 1.
pub fn normalized_kernel(k: &[f64]) -> Result<Vec<f64>> {
    let s: f64 = k.iter().sum();
    if k.is_empty() || !s.is_finite() || s == 0.0 || k.iter().any(|v| !v.is_finite()) {
        return Err(Error::Config(format!(
            "FIR kernel must be non-empty, finite, with a non-zero sum, got {k:?}"
        )));
    }
    Ok(k.iter().map(|v| v / s).collect())
}

/// The 2-D kernel of `_setup_kernel(k)`: `outer(k, k) / sum(outer(k, k))`, row-major `[n, n]`.
pub fn setup_kernel(k: &[f64]) -> Result<Vec<f64>> {
    let kn = normalized_kernel(k)?;
    Ok(kn
        .iter()
        .flat_map(|a| kn.iter().map(move |b| a * b))
        .collect())
}

fn check4(x: &Tensor, what: &str) -> Result<()> {
    if x.rank() != 4 {
        return Err(Error::Input(format!(
            "{what} expects [B, C, H, W], got {:?}",
            x.dims()
        )));
    }
    Ok(())
}

/// 1-D `upfirdn` along `dim`: insert `up - 1` zeros after every sample, pad `pad0` zeros before
/// and `pad1` after (negative values crop), convolve with `k` (a true convolution: the kernel is
/// flipped, as in `upfirdn2d`), then keep every `down`-th sample starting at 0.
pub fn upfirdn1d(
    x: &Tensor,
    dim: usize,
    k: &[f64],
    up: usize,
    down: usize,
    pad0: isize,
    pad1: isize,
) -> Result<Tensor> {
    if up == 0 || down == 0 || k.is_empty() {
        return Err(Error::Config(format!(
            "upfirdn needs up, down >= 1 and a kernel, got up {up}, down {down}, {} taps",
            k.len()
        )));
    }
    let mut x = x.clone();
    // zero insertion
    if up > 1 {
        let mut dims = x.dims().to_vec();
        x = x.unsqueeze(dim + 1)?.pad_with_zeros(dim + 1, 0, up - 1)?;
        dims[dim] *= up;
        x = x.reshape(dims)?;
    }
    // pad / crop
    let len = x.dim(dim)? as isize;
    let (c0, c1) = (pad0.min(0).unsigned_abs(), pad1.min(0).unsigned_abs());
    if c0 + c1 > 0 {
        let keep = len - (c0 + c1) as isize;
        if keep <= 0 {
            return Err(Error::Input(format!(
                "upfirdn crops everything along dim {dim} (length {len}, pads {pad0}, {pad1})"
            )));
        }
        x = x.narrow(dim, c0, keep as usize)?;
    }
    if pad0 > 0 || pad1 > 0 {
        x = x.pad_with_zeros(dim, pad0.max(0) as usize, pad1.max(0) as usize)?;
    }
    let len = x.dim(dim)?;
    let taps = k.len();
    if len < taps {
        return Err(Error::Input(format!(
            "upfirdn: signal of length {len} shorter than the {taps}-tap kernel"
        )));
    }
    let l_full = len - taps + 1;
    let n_out = (l_full - 1) / down + 1;
    // make room so that every tap can take n_out * down samples
    let need = (taps - 1) + n_out * down;
    if need > len {
        x = x.pad_with_zeros(dim, 0, need - len)?;
    }
    let mut acc: Option<Tensor> = None;
    for (j, kj) in k.iter().rev().enumerate() {
        if *kj == 0.0 {
            continue;
        }
        let mut s = x.narrow(dim, j, n_out * down)?;
        if down > 1 {
            let mut dims = s.dims().to_vec();
            dims[dim] = n_out;
            dims.insert(dim + 1, down);
            s = s.reshape(dims)?.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)?;
        }
        let term = s.affine(*kj, 0.0)?;
        acc = Some(match acc {
            None => term,
            Some(a) => (a + term)?,
        });
    }
    match acc {
        Some(a) => Ok(a),
        None => {
            let mut dims = x.dims().to_vec();
            dims[dim] = n_out;
            Ok(Tensor::zeros(dims, x.dtype(), x.device())?)
        }
    }
}

/// `upfirdn2d(x, outer(k, k), up, down, pad)` for `x: [B, C, H, W]` with a separable kernel
/// given by its 1-D factor `k` (applied along H and W), same pads on both axes. On the CPU
/// (f32 / f64) one kernel does both axes, with its adjoint as backward; elsewhere it is
/// [`upfirdn1d`] along W, then along H.
pub fn upfirdn2d(
    x: &Tensor,
    k: &[f64],
    up: usize,
    down: usize,
    pad: (isize, isize),
) -> Result<Tensor> {
    check4(x, "upfirdn2d")?;
    if up > 0 && down > 0 && !k.is_empty() {
        if let Some(y) = upfirdn2d_cpu(x, k, up, down, pad)? {
            return Ok(y);
        }
    }
    let h = upfirdn1d(x, 3, k, up, down, pad.0, pad.1)?;
    upfirdn1d(&h, 2, k, up, down, pad.0, pad.1)
}

/// FIR upsampling by `factor` (`upsample_2d`): zero insertion, then the kernel
/// `_setup_kernel(k) * factor^2` with pads `((p+1)/2 + factor - 1, p/2)`, `p = len(k) - factor`.
/// A constant image stays constant in the interior. `[B, C, H, W]` → `[B, C, fH, fW]`.
pub fn upsample_2d(x: &Tensor, k: &[f64], factor: usize) -> Result<Tensor> {
    let kn = normalized_kernel(k)?;
    let p = kn.len() as isize - factor as isize;
    let kf: Vec<f64> = kn.iter().map(|v| v * factor as f64).collect();
    upfirdn2d(
        x,
        &kf,
        factor,
        1,
        ((p + 1).div_euclid(2) + factor as isize - 1, p.div_euclid(2)),
    )
}

/// FIR downsampling by `factor` (`downsample_2d`): the kernel `_setup_kernel(k)` with pads
/// `((p+1)/2, p/2)`, `p = len(k) - factor`, keeping every `factor`-th sample.
/// `[B, C, H, W]` → `[B, C, H/f, W/f]`.
pub fn downsample_2d(x: &Tensor, k: &[f64], factor: usize) -> Result<Tensor> {
    let kn = normalized_kernel(k)?;
    let p = kn.len() as isize - factor as isize;
    upfirdn2d(x, &kn, 1, factor, ((p + 1).div_euclid(2), p.div_euclid(2)))
}

/// Fused FIR filter + strided convolution (`conv_downsample_2d`): pad by
/// `((p+1)/2, p/2)` with `p = len(k) - factor + conv_k - 1`, filter with `_setup_kernel(k)`, then
/// a `conv_k x conv_k` convolution with `w: [out, in, kh, kw]`, stride `factor`, no padding.
pub fn conv_downsample_2d(x: &Tensor, w: &Tensor, k: &[f64], factor: usize) -> Result<Tensor> {
    let (_, _, kh, kw) = w.dims4()?;
    if kh != kw {
        return Err(Error::Input(format!(
            "square conv kernel expected, got {kh}x{kw}"
        )));
    }
    let kn = normalized_kernel(k)?;
    let p = kn.len() as isize - factor as isize + kw as isize - 1;
    let h = upfirdn2d(x, &kn, 1, 1, ((p + 1).div_euclid(2), p.div_euclid(2)))?;
    super::conv::conv2d(&h, w, 0, factor)
}

/// Flips the two spatial axes of a `[.., kh, kw]` tensor (`w[..., ::-1, ::-1]`).
pub fn flip_spatial(w: &Tensor) -> Result<Tensor> {
    let (_, _, kh, kw) = w.dims4()?;
    let dev = w.device();
    let ih = Tensor::new((0..kh as u32).rev().collect::<Vec<_>>(), dev)?;
    let iw = Tensor::new((0..kw as u32).rev().collect::<Vec<_>>(), dev)?;
    Ok(w.index_select(&ih, 2)?.index_select(&iw, 3)?)
}

/// Fused transposed convolution + FIR filter (`upsample_conv_2d`), as the TF/JAX original
/// intends: `conv_transpose2d(x, flip(w)ᵀ, stride = factor)` followed by `upfirdn2d` with
/// `_setup_kernel(k) * factor^2` and pads `((p+1)/2 + factor - 1, p/2 + 1)`,
/// `p = len(k) - factor - (conv_k - 1)`. Equals `upsample_2d` followed by a `same`-padded
/// convolution with `w` away from the one-pixel border (tested; on the border the fused op sees
/// the FIR tail that the unfused one zero-pads). The PyTorch reference cannot run this path (negative-step
/// slicing of a tensor).
pub fn upsample_conv_2d(x: &Tensor, w: &Tensor, k: &[f64], factor: usize) -> Result<Tensor> {
    check4(x, "upsample_conv_2d")?;
    let (_, _, kh, kw) = w.dims4()?;
    if kh != kw {
        return Err(Error::Input(format!(
            "square conv kernel expected, got {kh}x{kw}"
        )));
    }
    let kn = normalized_kernel(k)?;
    let p = kn.len() as isize - factor as isize - (kw as isize - 1);
    let wt = flip_spatial(w)?.transpose(0, 1)?.contiguous()?;
    let h = x.conv_transpose2d(&wt, 0, 0, factor, 1)?;
    let kf: Vec<f64> = kn.iter().map(|v| v * factor as f64).collect();
    upfirdn2d(
        &h,
        &kf,
        1,
        1,
        (
            (p + 1).div_euclid(2) + factor as isize - 1,
            p.div_euclid(2) + 1,
        ),
    )
}

/// Nearest-neighbour upsampling (`naive_upsample_2d`): every pixel repeated `factor x factor`.
///
/// This is [`upfirdn2d`] with the kernel of `factor` ones, `up = factor` and pads
/// `(factor - 1, 0)`: on the CPU (f32 / f64) it runs as that kernel, whose adjoint (the sum
/// over each `factor x factor` block) is its backward pass. Elsewhere it is a broadcast, whose
/// backward candle computes as a reduction.
pub fn naive_upsample_2d(x: &Tensor, factor: usize) -> Result<Tensor> {
    check4(x, "naive_upsample_2d")?;
    check_factor(factor, "naive_upsample_2d")?;
    let ones = vec![1.0; factor];
    if let Some(y) = upfirdn2d_cpu(x, &ones, factor, 1, (factor as isize - 1, 0))? {
        return Ok(y);
    }
    let (b, c, h, w) = x.dims4()?;
    Ok(x.reshape((b, c, h, 1, w, 1))?
        .broadcast_as((b, c, h, factor, w, factor))?
        .reshape((b, c, h * factor, w * factor))?)
}

/// Box downsampling (`naive_downsample_2d`): mean over `factor x factor` blocks.
///
/// This is [`upfirdn2d`] with the kernel of `factor` values `1 / factor`, `down = factor` and no
/// pads: on the CPU (f32 / f64) it runs as that kernel, with its adjoint (each block's gradient
/// spread evenly over it) as the backward pass. Elsewhere it is a mean over a reshape.
pub fn naive_downsample_2d(x: &Tensor, factor: usize) -> Result<Tensor> {
    check4(x, "naive_downsample_2d")?;
    check_factor(factor, "naive_downsample_2d")?;
    let (b, c, h, w) = x.dims4()?;
    if h % factor != 0 || w % factor != 0 {
        return Err(Error::Input(format!(
            "naive_downsample_2d: {h}x{w} is not divisible by factor {factor}"
        )));
    }
    let taps = vec![1.0 / factor as f64; factor];
    if let Some(y) = upfirdn2d_cpu(x, &taps, 1, factor, (0, 0))? {
        return Ok(y);
    }
    let r = x.reshape((b, c, h / factor, factor, w / factor, factor))?;
    Ok(r.mean(D::Minus1)?.mean(3)?)
}

fn check_factor(factor: usize, what: &str) -> Result<()> {
    if factor == 0 {
        return Err(Error::Input(format!(
            "{what}: factor must be at least 1, got 0"
        )));
    }
    Ok(())
}

/// [`upfirdn2d`] on the CPU as one kernel per `[H, W]` plane (`sde_kernels::fir`), with its
/// adjoint as the backward pass (the composite form costs a dozen full passes per axis: zero
/// insertion, padding, a shifted slice, a scaled copy and a sum per tap, each differentiated
/// again).
#[derive(Debug, Clone)]
struct UpFirDnOp {
    /// The kernel, factors and pads.
    fir: UpFirDn,
    /// Input (H, W) of the forward map.
    in_hw: (usize, usize),
    /// Apply the adjoint (the input gradient): `[.., out_h, out_w]` → `[.., in_h, in_w]`.
    adjoint: bool,
}

impl UpFirDnOp {
    fn run<T: Float>(&self, x: &[T], planes: usize) -> Vec<T> {
        if self.adjoint {
            self.fir.adjoint(x, planes, self.in_hw)
        } else {
            self.fir.forward(x, planes, self.in_hw)
        }
    }
}

impl candle_core::CustomOp1 for UpFirDnOp {
    fn name(&self) -> &'static str {
        "score-nets-upfirdn2d"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::backend::BackendStorage;
        use candle_core::CpuStorage;
        let (a, b) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("upfirdn2d: non-contiguous input".into()))?;
        let dims = l.dims();
        let planes = dims[0] * dims[1];
        let (oh, ow) = if self.adjoint {
            self.in_hw
        } else {
            self.fir.out_hw(self.in_hw)
        };
        let y = match s {
            CpuStorage::F32(v) => CpuStorage::F32(self.run(&v[a..b], planes)),
            CpuStorage::F64(v) => CpuStorage::F64(self.run(&v[a..b], planes)),
            _ => candle_core::bail!("upfirdn2d: unsupported dtype {:?}", s.dtype()),
        };
        Ok((y, candle_core::Shape::from((dims[0], dims[1], oh, ow))))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let adj = Self {
            adjoint: !self.adjoint,
            ..self.clone()
        };
        Ok(Some(grad.contiguous()?.apply_op1(adj)?))
    }
}

/// The CPU kernel path of [`upfirdn2d`], when it applies (`None`: use the composite ops).
fn upfirdn2d_cpu(
    x: &Tensor,
    k: &[f64],
    up: usize,
    down: usize,
    pad: (isize, isize),
) -> Result<Option<Tensor>> {
    if !x.device().is_cpu() || !matches!(x.dtype(), DType::F32 | DType::F64) {
        return Ok(None);
    }
    let (_, _, h, w) = x.dims4()?;
    let Some(fir) = UpFirDn::new(k, up, down, pad) else {
        return Ok(None);
    };
    if fir.out_len(h).is_none() || fir.out_len(w).is_none() {
        return Ok(None);
    }
    let op = UpFirDnOp {
        fir,
        in_hw: (h, w),
        adjoint: false,
    };
    Ok(Some(x.contiguous()?.apply_op1(op)?))
}
