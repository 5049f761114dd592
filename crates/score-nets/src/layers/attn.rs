//! `AttnBlockpp`: self-attention over all pixels.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::common::{group_norm, GroupNorm, Nin};
use crate::Result;

/// `layerspp.AttnBlockpp`: $h = \mathrm{GN}(x)$, $q, k, v = \mathrm{NIN}_{0,1,2}(h)$,
/// $A = \mathrm{softmax}(q^\top k / \sqrt C)$ over all $HW$ positions,
/// $y = x + \mathrm{NIN}_3(v A^\top)$, divided by $\sqrt2$ when `skip_rescale`.
/// Parameters `GroupNorm_0.{weight,bias}`, `NIN_{0..3}.{W,b}` (`NIN_3` uses `init_scale`).
#[derive(Debug, Clone)]
pub struct AttnBlockPp {
    group_norm_0: GroupNorm,
    nin: [Nin; 4],
    skip_rescale: bool,
}

impl AttnBlockPp {
    /// Creates or loads the block under `vb`.
    #[doc(alias = "AttnBlockpp")]
    pub fn new(
        channels: usize,
        skip_rescale: bool,
        init_scale: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            group_norm_0: group_norm(channels, vb.pp("GroupNorm_0"))?,
            nin: [
                Nin::new(channels, channels, 0.1, vb.pp("NIN_0"))?,
                Nin::new(channels, channels, 0.1, vb.pp("NIN_1"))?,
                Nin::new(channels, channels, 0.1, vb.pp("NIN_2"))?,
                Nin::new(channels, channels, init_scale, vb.pp("NIN_3"))?,
            ],
            skip_rescale,
        })
    }

    /// `x: [B, C, H, W]` → `[B, C, H, W]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let hn = self.group_norm_0.forward(x)?;
        // channels-last [B, HW, C]
        let hl = hn.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()?;
        let q = self.nin[0].forward_channels_last(&hl)?;
        let k = self.nin[1].forward_channels_last(&hl)?;
        let v = self.nin[2].forward_channels_last(&hl)?;
        let scores = (q.matmul(&k.transpose(1, 2)?)? * (c as f64).powf(-0.5))?;
        let a = softmax_last(&scores)?;
        let o = a.matmul(&v)?;
        let o = self.nin[3].forward_channels_last(&o)?;
        let o = o.transpose(1, 2)?.reshape((b, c, h, w))?;
        let y = (x + o)?;
        Ok(if self.skip_rescale {
            (y / std::f64::consts::SQRT_2)?
        } else {
            y
        })
    }
}

/// Softmax over the last dim, written with differentiable ops (candle's fused
/// `softmax_last_dim` has no backward): $\mathrm{softmax}(s)_j = e^{s_j - m} / \sum_k e^{s_k - m}$,
/// $m = \max_k s_k$ (detached; it cancels).
pub fn softmax_last(s: &Tensor) -> Result<Tensor> {
    let m = s.max_keepdim(candle_core::D::Minus1)?.detach();
    let e = s.broadcast_sub(&m)?.exp()?;
    let z = e.sum_keepdim(candle_core::D::Minus1)?;
    Ok(e.broadcast_div(&z)?)
}
