//! The convolution primitive used by every block, with a fast backward pass.
//!
//! Candle's `conv2d` backward always computes the kernel gradient (even for constant weights,
//! as a convolution whose kernel is the whole output gradient) and computes the input gradient
//! with `conv_transpose2d`, whose CPU kernel is a direct loop: a forward + input-vjp costs ~7x
//! the forward. [`conv2d`] avoids both when a gradient will be needed (the input or the weight
//! tracks operations):
//!
//! - on the CPU, a custom op runs the forward convolution and computes the input gradient as a
//!   plain convolution, $\nabla_x = \mathrm{conv}(\mathrm{dilate}_s(\nabla_y),
//!   \mathrm{flip}(w)^\top, \text{pad } k-1-p)$, through the same fast forward path; the kernel
//!   gradient is computed only when the kernel tracks gradients;
//! - on other devices, an im2col made of shifted slices (`narrow`, whose backward is a zero pad)
//!   and a batched GEMM (whose backward is two GEMMs).
//!
//! Candle's CPU forward kernel (tiled im2col with a scalar gather) is itself about twice as slow
//! as an im2col built from contiguous slice copies followed by one batched GEMM, so on the CPU
//! every convolution (forward, input gradient, kernel gradient) goes through
//! [`conv2d_im2col`]; other devices use Candle's kernel when no gradient is tracked.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Storage, Tensor};

use crate::{Error, Result};

/// 2-D cross-correlation `x: [B, in, H, W]`, `w: [out, in, kh, kw]` with symmetric zero
/// padding and stride (`F.conv2d`): $y_{b,o,i,j} = \sum_{c,u,v} w_{o,c,u,v}\,
/// x_{b,c,s i+u-p,\,s j+v-p}$.
pub fn conv2d(x: &Tensor, w: &Tensor, padding: usize, stride: usize) -> Result<Tensor> {
    let cpu = x.device().is_cpu()
        && matches!(x.dtype(), candle_core::DType::F32 | candle_core::DType::F64);
    if !(x.track_op() || w.track_op()) {
        return if cpu {
            conv2d_im2col(x, w, padding, stride)
        } else {
            Ok(x.conv2d(w, padding, stride, 1, 1)?)
        };
    }
    let (_, _, kh, kw) = w.dims4()?;
    if cpu && padding < kh && padding < kw && stride > 0 {
        let x = x.contiguous()?;
        let w = w.contiguous()?;
        return Ok(x.apply_op2(&w, ConvOp { padding, stride })?);
    }
    conv2d_im2col(x, w, padding, stride)
}

/// Keeps every `stride`-th element of `dim`, starting at 0, `n` elements in all.
fn subsample(x: &Tensor, dim: usize, start: usize, n: usize, stride: usize) -> Result<Tensor> {
    if stride == 1 {
        return Ok(x.narrow(dim, start, n)?);
    }
    let len = x.dim(dim)?;
    let need = start + n * stride;
    let x = if need > len {
        x.pad_with_zeros(dim, 0, need - len)?
    } else {
        x.clone()
    };
    let s = x.narrow(dim, start, n * stride)?;
    let mut dims = s.dims().to_vec();
    dims[dim] = n;
    dims.insert(dim + 1, stride);
    Ok(s.reshape(dims)?.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)?)
}

/// The im2col matrix `[B, C*kh*kw, Ho*Wo]` of `x` for a `kh x kw` kernel (channel-major rows,
/// matching `w.reshape(out, C*kh*kw)`), built from differentiable shifted slices.
pub fn im2col(
    x: &Tensor,
    kh: usize,
    kw: usize,
    padding: usize,
    stride: usize,
) -> Result<(Tensor, usize, usize)> {
    let (b, c, h, wd) = x.dims4()?;
    if stride == 0 || h + 2 * padding < kh || wd + 2 * padding < kw {
        return Err(Error::Input(format!(
            "im2col: input {:?} does not fit a {kh}x{kw} kernel (padding {padding}, stride {stride})",
            x.dims()
        )));
    }
    let ho = (h + 2 * padding - kh) / stride + 1;
    let wo = (wd + 2 * padding - kw) / stride + 1;
    let xp = if padding > 0 {
        x.pad_with_zeros(2, padding, padding)?
            .pad_with_zeros(3, padding, padding)?
    } else {
        x.clone()
    };
    let k = c * kh * kw;
    let cols = if kh == 1 && kw == 1 {
        subsample(&subsample(&xp, 2, 0, ho, stride)?, 3, 0, wo, stride)?.reshape((b, c, ho * wo))?
    } else {
        let mut slices = Vec::with_capacity(kh * kw);
        for u in 0..kh {
            let rows = subsample(&xp, 2, u, ho, stride)?;
            for v in 0..kw {
                slices.push(subsample(&rows, 3, v, wo, stride)?);
            }
        }
        Tensor::stack(&slices, 2)?.reshape((b, k, ho * wo))?
    };
    Ok((cols, ho, wo))
}

/// Zero insertion along H and W (`stride - 1` zeros between samples), then `extra` zeros at the
/// end of each: the dilation the input gradient of a strided convolution needs.
fn dilate(g: &Tensor, stride: usize, extra: (usize, usize)) -> Result<Tensor> {
    let mut g = g.clone();
    if stride > 1 {
        for dim in [2usize, 3] {
            let n = g.dim(dim)?;
            let mut dims = g.dims().to_vec();
            dims[dim] = n * stride;
            g = g
                .unsqueeze(dim + 1)?
                .pad_with_zeros(dim + 1, 0, stride - 1)?
                .reshape(dims)?
                .narrow(dim, 0, (n - 1) * stride + 1)?;
        }
    }
    if extra.0 > 0 {
        g = g.pad_with_zeros(2, 0, extra.0)?;
    }
    if extra.1 > 0 {
        g = g.pad_with_zeros(3, 0, extra.1)?;
    }
    Ok(g)
}

/// Candle's CPU convolution as a custom op with an efficient backward pass.
#[derive(Debug, Clone, Copy)]
struct ConvOp {
    padding: usize,
    stride: usize,
}

fn cpu_tensor(s: &CpuStorage, l: &Layout) -> candle_core::Result<Tensor> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("conv2d: non-contiguous operand".into()))?;
    let dev = candle_core::Device::Cpu;
    match s {
        CpuStorage::F32(v) => Tensor::from_slice(&v[a..b], l.shape(), &dev),
        CpuStorage::F64(v) => Tensor::from_slice(&v[a..b], l.shape(), &dev),
        _ => Err(candle_core::Error::Msg(format!(
            "conv2d: unsupported dtype {:?}",
            s.dtype()
        ))),
    }
}

impl CustomOp2 for ConvOp {
    fn name(&self) -> &'static str {
        "score-nets-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_tensor(s1, l1)?;
        let w = cpu_tensor(s2, l2)?;
        let y = conv2d_im2col(&x, &w, self.padding, self.stride)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?
            .contiguous()?;
        let shape = y.shape().clone();
        let (st, _) = y.storage_and_layout();
        match &*st {
            Storage::Cpu(cs) => Ok((cs.clone(), shape)),
            _ => Err(candle_core::Error::Msg(
                "conv2d: expected CPU storage".into(),
            )),
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let to_c = |e: Error| candle_core::Error::Msg(e.to_string());
        let (_, _, h, wd) = x.dims4()?;
        let (o, c, kh, kw) = w.dims4()?;
        let (p, s) = (self.padding, self.stride);
        let gx = if x.track_op() {
            let (_, _, ho, wo) = grad.dims4()?;
            let extra = (
                h + 2 * p - ((ho - 1) * s + kh),
                wd + 2 * p - ((wo - 1) * s + kw),
            );
            let g = dilate(grad, s, extra).map_err(to_c)?;
            let wt = super::fir::flip_spatial(w)
                .map_err(to_c)?
                .transpose(0, 1)?
                .contiguous()?;
            // kh - 1 - p == kw - 1 - p for the square kernels used here; asymmetric ones pad
            // the difference explicitly
            let (ph, pw) = (kh - 1 - p, kw - 1 - p);
            let pc = ph.min(pw);
            let g = g
                .pad_with_zeros(2, ph - pc, ph - pc)?
                .pad_with_zeros(3, pw - pc, pw - pc)?;
            Some(conv2d_im2col(&g.detach(), &wt, pc, 1).map_err(to_c)?)
        } else {
            None
        };
        let gw = if w.track_op() {
            let (cols, ho, wo) = im2col(&x.detach(), kh, kw, p, s).map_err(to_c)?;
            let b = grad.dim(0)?;
            let g = grad.reshape((b, o, ho * wo))?;
            let gw = g.matmul(&cols.transpose(1, 2)?)?.sum(0)?;
            Some(gw.reshape((o, c, kh, kw))?)
        } else {
            None
        };
        Ok((gx, gw))
    }
}

/// [`conv2d`] as im2col (shifted slices) + batched GEMM, built from differentiable ops.
pub fn conv2d_im2col(x: &Tensor, w: &Tensor, padding: usize, stride: usize) -> Result<Tensor> {
    let (b, c, h, wd) = x.dims4()?;
    let (o, ci, kh, kw) = w.dims4()?;
    if ci != c || stride == 0 || h + 2 * padding < kh || wd + 2 * padding < kw {
        return Err(Error::Input(format!(
            "conv2d: input {:?} does not fit kernel {:?} (padding {padding}, stride {stride})",
            x.dims(),
            w.dims()
        )));
    }
    let (cols, ho, wo) = im2col(x, kh, kw, padding, stride)?;
    let k = c * kh * kw;
    let wm = w.reshape((o, k))?;
    let y = wm.broadcast_left(b)?.matmul(&cols)?;
    Ok(y.reshape((b, o, ho, wo))?)
}
