//! The convolution primitive used by every block.

use candle_core::Tensor;

use crate::Result;

/// 2-D cross-correlation `x: [B, in, H, W]`, `w: [out, in, k, k]` with symmetric zero padding
/// and stride (`F.conv2d`).
pub fn conv2d(x: &Tensor, w: &Tensor, padding: usize, stride: usize) -> Result<Tensor> {
    Ok(x.conv2d(w, padding, stride, 1, 1)?)
}
