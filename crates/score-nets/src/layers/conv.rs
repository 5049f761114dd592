//! The convolution primitive used by every block, with a fast backward pass.
//!
//! Candle's `conv2d` backward always computes the kernel gradient (even for constant weights) and
//! computes the input gradient with `conv_transpose2d`, whose CPU kernel is a direct loop: a
//! forward + input-vjp costs ~7x the forward. When a gradient will be needed (the input or the
//! weight tracks operations) [`conv2d`] instead builds the convolution from differentiable
//! primitives: an im2col made of shifted slices (`narrow`, whose backward is a zero pad) and a
//! batched matrix product (whose backward is two GEMMs). The input gradient then costs about one
//! forward, and the kernel gradient is only computed when the kernel needs it. Without gradient
//! tracking Candle's own tiled-im2col kernel is used.

use candle_core::Tensor;

use crate::{Error, Result};

/// 2-D cross-correlation `x: [B, in, H, W]`, `w: [out, in, kh, kw]` with symmetric zero
/// padding and stride (`F.conv2d`): $y_{b,o,i,j} = \sum_{c,u,v} w_{o,c,u,v}\,
/// x_{b,c,s i+u-p,\,s j+v-p}$.
pub fn conv2d(x: &Tensor, w: &Tensor, padding: usize, stride: usize) -> Result<Tensor> {
    if x.track_op() || w.track_op() {
        conv2d_im2col(x, w, padding, stride)
    } else {
        Ok(x.conv2d(w, padding, stride, 1, 1)?)
    }
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
        // [B, C, kh*kw, Ho, Wo] -> [B, C*kh*kw, Ho*Wo] (channel-major, as w.reshape(o, C*kh*kw))
        Tensor::stack(&slices, 2)?.reshape((b, k, ho * wo))?
    };
    let wm = w.reshape((o, k))?;
    let y = wm.broadcast_left(b)?.matmul(&cols)?;
    Ok(y.reshape((b, o, ho, wo))?)
}
