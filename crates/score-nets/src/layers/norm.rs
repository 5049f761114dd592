//! GroupNorm, optionally fused with the SiLU that follows it in every residual block, as one CPU
//! kernel with its backward pass.
//!
//! candle-nn's `GroupNorm` is a composite of eight tensor ops (mean, subtraction, square, mean,
//! add, sqrt, division, affine) and SiLU adds one more; each is a full pass over the activation,
//! and the backward graph has twice as many. On the CPU (f32 / f64) [`GroupNorm::forward`] and
//! [`GroupNorm::forward_act`] run one custom op that reads the input twice (statistics) and writes
//! the output once; its backward reads input and output gradient twice and writes the input
//! gradient once, and computes the affine-parameter gradients only when they are tracked. Other
//! devices and dtypes use the composite ops. The kernels themselves (vectorised statistics and
//! SiLU, one task per sample and group) are `sde_kernels::groupnorm`'s.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use super::common::Activation;
use super::conv::slice;
use crate::{Error, Result};
use sde_kernels::groupnorm::{group_norm_backward, group_norm_forward, GnActivation, GnShape};

/// `nn.GroupNorm(groups, C, eps)`: for each sample and each group $g$ of $C/G$ channels,
/// $y = \gamma_c\,(x - \mu_g)/\sqrt{\sigma_g^2 + \epsilon} + \beta_c$, with $\mu_g$, $\sigma_g^2$
/// the mean and (biased) variance over the group's channels and all spatial positions.
/// Parameters `weight` ($\gamma$) and `bias` ($\beta$) of shape `[C]`.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    /// A GroupNorm over `groups` groups of the channels of `weight` and `bias` (both `[C]`).
    pub fn new(weight: Tensor, bias: Tensor, groups: usize, eps: f64) -> Result<Self> {
        let c = weight.dims1()?;
        if groups == 0 || !c.is_multiple_of(groups) || bias.dims1()? != c {
            return Err(Error::Config(format!(
                "GroupNorm: {groups} groups of {c} channels (bias {:?})",
                bias.dims()
            )));
        }
        Ok(Self {
            weight,
            bias,
            groups,
            eps,
        })
    }

    /// $\gamma$, `[C]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// $\beta$, `[C]`.
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// The number of groups $G$.
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// `x: [B, C, ...]` → GroupNorm of `x`, same shape.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, false)
    }

    /// `act(GroupNorm(x))`, fused into one kernel on the CPU for SiLU,
    /// $y = z\,\sigma(z)$ with $z$ the normalised and scaled input.
    pub fn forward_act(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        match act {
            Activation::Swish => self.apply(x, true),
            _ => act.apply(&self.forward(x)?),
        }
    }

    fn apply(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        let dims = x.dims();
        if dims.len() < 3 || dims[1] != self.weight.dim(0)? {
            return Err(Error::Input(format!(
                "GroupNorm over {} channels expects [B, C, ...], got {dims:?}",
                self.weight.dim(0)?
            )));
        }
        let fast = x.device().is_cpu()
            && matches!(x.dtype(), candle_core::DType::F32 | candle_core::DType::F64)
            && self.weight.dtype() == x.dtype()
            && self.bias.dtype() == x.dtype();
        if !fast {
            let y = self.composite(x)?;
            return if silu {
                Ok(candle_nn::ops::silu(&y)?)
            } else {
                Ok(y)
            };
        }
        let op = GnOp {
            groups: self.groups,
            eps: self.eps,
            silu,
        };
        let x = x.contiguous()?;
        Ok(x.apply_op3_arc(
            &self.weight.contiguous()?,
            &self.bias.contiguous()?,
            std::sync::Arc::new(Box::new(op)),
        )?)
    }

    /// The same GroupNorm from plain tensor ops (candle-nn's formulation): the path of other
    /// devices and dtypes, and the reference of the kernel's tests.
    pub fn composite(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (b, c) = (dims[0], dims[1]);
        let n = x.elem_count() / (b * self.groups);
        let xg = x.reshape((b, self.groups, n))?;
        let mean = (xg.sum_keepdim(2)? / n as f64)?;
        let xc = xg.broadcast_sub(&mean)?;
        let var = (xc.sqr()?.sum_keepdim(2)? / n as f64)?;
        let xn = xc.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        let mut wd = vec![1usize; dims.len()];
        wd[1] = c;
        Ok(xn
            .reshape(dims)?
            .broadcast_mul(&self.weight.reshape(wd.clone())?)?
            .broadcast_add(&self.bias.reshape(wd)?)?)
    }
}

impl candle_core::Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        GroupNorm::forward(self, x).map_err(|e| candle_core::Error::Msg(e.to_string()))
    }
}

/// The fused forward kernel: `x` `[B, C, S]` contiguous, `gamma`, `beta` `[C]`.
#[derive(Debug, Clone, Copy)]
struct GnOp {
    groups: usize,
    eps: f64,
    silu: bool,
}

/// The kernel's layout of `x` `[B, C, ...]` with `groups` groups (checked by the kernel too).
fn gn_shape(l: &Layout, groups: usize) -> candle_core::Result<GnShape> {
    let d = l.dims();
    if d.len() < 3 || groups == 0 || d[1] % groups != 0 {
        candle_core::bail!(
            "group_norm: expected [B, C, ...] with C a multiple of {groups}, got {d:?}"
        )
    }
    Ok(GnShape {
        batch: d[0],
        channels: d[1],
        groups,
        spatial: d[2..].iter().product(),
    })
}

fn act(silu: bool) -> GnActivation {
    if silu {
        GnActivation::Silu
    } else {
        GnActivation::Identity
    }
}

impl CustomOp3 for GnOp {
    fn name(&self) -> &'static str {
        "score-nets-group-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let shape = gn_shape(l1, self.groups)?;
        let (e, a) = (self.eps, act(self.silu));
        let y = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(group_norm_forward::<f32>(
                slice(s1, l1)?,
                slice(s2, l2)?,
                slice(s3, l3)?,
                shape,
                e,
                a,
            )),
            CpuStorage::F64(_) => CpuStorage::F64(group_norm_forward::<f64>(
                slice(s1, l1)?,
                slice(s2, l2)?,
                slice(s3, l3)?,
                shape,
                e,
                a,
            )),
            _ => candle_core::bail!("group_norm: unsupported dtype {:?}", s1.dtype()),
        };
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let params = gamma.track_op() || beta.track_op();
        let op = GnBwdOp { fwd: *self, params };
        let grad = grad.contiguous()?;
        // the kernel needs beta for SiLU's derivative; pack it with gamma
        let gb = Tensor::cat(&[gamma.detach(), beta.detach()], 0)?;
        let packed = x.detach().apply_op3_no_bwd(&gb, &grad.detach(), &op)?;
        let n = x.elem_count();
        let dx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        if !params {
            return Ok((Some(dx), None, None));
        }
        let c = x.dim(1)?;
        let pg = packed.narrow(0, n, 2 * c)?.reshape((2, c))?;
        Ok((Some(dx), Some(pg.get(0)?), Some(pg.get(1)?)))
    }
}

/// Backward kernel: `x`, `[gamma; beta]`, `dy` → `dx` flattened, then the `[2, C]` parameter
/// gradients when `params`.
#[derive(Debug, Clone, Copy)]
struct GnBwdOp {
    fwd: GnOp,
    params: bool,
}

impl CustomOp3 for GnBwdOp {
    fn name(&self) -> &'static str {
        "score-nets-group-norm-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let shape = gn_shape(l1, self.fwd.groups)?;
        let c = shape.channels;
        let (e, a, p) = (self.fwd.eps, act(self.fwd.silu), self.params);
        let out = match s1 {
            CpuStorage::F32(_) => {
                let gb = slice::<f32>(s2, l2)?;
                let (x, dy) = (slice(s1, l1)?, slice(s3, l3)?);
                CpuStorage::F32(group_norm_backward(
                    x,
                    &gb[..c],
                    &gb[c..],
                    dy,
                    shape,
                    e,
                    a,
                    p,
                ))
            }
            CpuStorage::F64(_) => {
                let gb = slice::<f64>(s2, l2)?;
                let (x, dy) = (slice(s1, l1)?, slice(s3, l3)?);
                CpuStorage::F64(group_norm_backward(
                    x,
                    &gb[..c],
                    &gb[c..],
                    dy,
                    shape,
                    e,
                    a,
                    p,
                ))
            }
            _ => candle_core::bail!("group_norm: unsupported dtype {:?}", s1.dtype()),
        };
        let len = l1.shape().elem_count() + if p { 2 * c } else { 0 };
        Ok((out, Shape::from(len)))
    }
}
