//! `AttnBlockpp`: self-attention over all pixels.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};
use candle_nn::VarBuilder;

use super::common::{group_norm, GroupNorm, Nin};
use super::conv::slice;
use crate::Result;
use sde_kernels::softmax::{softmax_rows, softmax_rows_backward};

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

/// Softmax over the last dim, $\mathrm{softmax}(s)_j = e^{s_j - m} / \sum_k e^{s_k - m}$,
/// $m = \max_k s_k$ (candle-nn's fused `softmax_last_dim` has no backward).
///
/// On the CPU (float32 / float64) it is one op (`sde_kernels::softmax`, rows in parallel on
/// candle's pool), with the backward $\partial s = y \odot (\partial y - \langle \partial y, y\rangle)$ per row
/// as one op too (the composite version is five ops forward and as many gradient
/// accumulations backward, over `[B, HW, HW]` tensors). Elsewhere: differentiable tensor ops,
/// the max detached (it cancels).
pub fn softmax_last(s: &Tensor) -> Result<Tensor> {
    if s.device().is_cpu() && matches!(s.dtype(), DType::F32 | DType::F64) && s.rank() >= 1 {
        return Ok(s.contiguous()?.apply_op1(SoftmaxOp)?);
    }
    let m = s.max_keepdim(candle_core::D::Minus1)?.detach();
    let e = s.broadcast_sub(&m)?.exp()?;
    let z = e.sum_keepdim(candle_core::D::Minus1)?;
    Ok(e.broadcast_div(&z)?)
}

/// The CPU softmax over the last dim (see [`softmax_last`]).
struct SoftmaxOp;

impl CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "score-nets-softmax-last"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let n = l.dims().last().copied().unwrap_or(1);
        let y = match s {
            CpuStorage::F32(_) => CpuStorage::F32(softmax_rows(slice::<f32>(s, l)?, n)),
            CpuStorage::F64(_) => CpuStorage::F64(softmax_rows(slice::<f64>(s, l)?, n)),
            s => candle_core::bail!("softmax: unsupported dtype {:?}", s.dtype()),
        };
        Ok((y, l.shape().clone()))
    }

    fn bwd(&self, _s: &Tensor, y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(y.detach().apply_op2_no_bwd(
            &grad.detach().contiguous()?,
            &SoftmaxBwdOp,
        )?))
    }
}

/// ∂s = y ⊙ (∂y − ⟨∂y, y⟩) per row: operands `(y, grad_y)`.
struct SoftmaxBwdOp;

impl CustomOp2 for SoftmaxBwdOp {
    fn name(&self) -> &'static str {
        "score-nets-softmax-last-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let n = l1.dims().last().copied().unwrap_or(1);
        let dx = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                CpuStorage::F32(softmax_rows_backward(slice(s1, l1)?, slice(s2, l2)?, n))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                CpuStorage::F64(softmax_rows_backward(slice(s1, l1)?, slice(s2, l2)?, n))
            }
            _ => candle_core::bail!("softmax backward: unsupported or mixed dtypes"),
        };
        Ok((dx, l1.shape().clone()))
    }
}
