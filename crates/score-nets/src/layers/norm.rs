//! GroupNorm, optionally fused with the SiLU that follows it in every residual block, as one CPU
//! kernel with its backward pass.
//!
//! candle-nn's `GroupNorm` is a composite of eight tensor ops (mean, subtraction, square, mean,
//! add, sqrt, division, affine) and SiLU adds one more; each is a full pass over the activation,
//! and the backward graph has twice as many. On the CPU (f32 / f64) [`GroupNorm::forward`] and
//! [`GroupNorm::forward_act`] run one custom op that reads the input twice (statistics) and writes
//! the output once; its backward reads input and output gradient twice and writes the input
//! gradient once, and computes the affine-parameter gradients only when they are tracked. Other
//! devices and dtypes use the composite ops.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor, WithDType};
use num_traits::Float;

use super::common::Activation;
use super::conv::slice;
use super::conv_cpu::SyncPtr;
use crate::{Error, Result};

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

/// Mean and $1/\sqrt{\sigma^2 + \epsilon}$ of `v` (two passes, f64 accumulation).
fn stats<T: WithDType>(v: &[T], eps: f64) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().map(|a| a.to_f64()).sum::<f64>() / n;
    let var = v
        .iter()
        .map(|a| {
            let d = a.to_f64() - mean;
            d * d
        })
        .sum::<f64>()
        / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// Runs `f(i)` for `i in 0..n` on candle's CPU thread pool.
fn par_for(n: usize, f: impl Fn(usize) + Sync) {
    candle_core::utils::barrier_pool().execute_chunked(n, |r| r.for_each(&f));
}

fn gn_fwd<T: WithDType + Float>(
    x: &[T],
    gamma: &[T],
    beta: &[T],
    b: usize,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Vec<T> {
    let c = gamma.len();
    let s = x.len() / (b * c);
    let cg = c / groups;
    let n = cg * s;
    let mut y = vec![T::zero(); x.len()];
    let out = SyncPtr(y.as_mut_ptr());
    par_for(b * groups, |bg| {
        let g = bg % groups;
        let xs = &x[bg * n..(bg + 1) * n];
        // SAFETY: group bg owns y[bg*n .. (bg+1)*n]
        let ys = unsafe { out.slice(bg * n, n) };
        let (mean, rstd) = stats(xs, eps);
        for j in 0..cg {
            let ch = g * cg + j;
            let a = gamma[ch].to_f64() * rstd;
            let (a, o) = (T::from_f64(a), T::from_f64(beta[ch].to_f64() - mean * a));
            let (xc, yc) = (&xs[j * s..(j + 1) * s], &mut ys[j * s..(j + 1) * s]);
            if silu {
                for (yv, &xv) in yc.iter_mut().zip(xc) {
                    let z = xv * a + o;
                    *yv = z / (T::one() + (-z).exp());
                }
            } else {
                for (yv, &xv) in yc.iter_mut().zip(xc) {
                    *yv = xv * a + o;
                }
            }
        }
    });
    y
}

/// Input gradient (and, when `param_grads`, the per-sample-summed `dgamma`, `dbeta` appended):
/// with $\hat x = (x - \mu) r$, $z = \gamma \hat x + \beta$, $dz = dy$ (or
/// $dy\,\sigma(z)(1 + z(1 - \sigma(z)))$ after SiLU), $d\hat x = \gamma\,dz$:
/// $dx = r\,(d\hat x - \overline{d\hat x} - \hat x\,\overline{d\hat x\,\hat x})$ (group means),
/// $d\gamma_c = \sum dz\,\hat x$, $d\beta_c = \sum dz$.
#[allow(clippy::too_many_arguments)]
fn gn_bwd<T: WithDType + Float>(
    x: &[T],
    gamma: &[T],
    beta: &[T],
    dy: &[T],
    b: usize,
    groups: usize,
    eps: f64,
    silu: bool,
    param_grads: bool,
) -> Vec<T> {
    let c = gamma.len();
    let s = x.len() / (b * c);
    let cg = c / groups;
    let n = cg * s;
    let extra = if param_grads { 2 * b * c } else { 0 };
    let mut dx = vec![T::zero(); x.len() + extra];
    let out = SyncPtr(dx.as_mut_ptr());
    let total = x.len();
    par_for(b * groups, |bg| {
        let (bi, g) = (bg / groups, bg % groups);
        let xs = &x[bg * n..(bg + 1) * n];
        let dys = &dy[bg * n..(bg + 1) * n];
        // SAFETY: group bg owns dx[bg*n .. (bg+1)*n] (bg < b·groups, so in bounds of x.len());
        // no other task touches that range. The parameter-gradient slots of sample bi are
        // shared by its groups, so they are written element by element below, never sliced.
        let dxs = unsafe { out.slice(bg * n, n) };
        let (mean, rstd) = stats(xs, eps);
        // first pass: dz into dxs, group sums of dxhat and dxhat * xhat
        let (mut s1, mut s2) = (0f64, 0f64);
        for j in 0..cg {
            let ch = g * cg + j;
            let gm = gamma[ch].to_f64();
            let (xc, dyc) = (&xs[j * s..(j + 1) * s], &dys[j * s..(j + 1) * s]);
            let dzc = &mut dxs[j * s..(j + 1) * s];
            let (m, r) = (T::from_f64(mean), T::from_f64(rstd));
            if silu {
                let (a, o) = (
                    T::from_f64(gm * rstd),
                    T::from_f64(beta[ch].to_f64() - mean * gm * rstd),
                );
                for ((d, &xv), &dv) in dzc.iter_mut().zip(xc).zip(dyc) {
                    let z = xv * a + o;
                    let sg = T::one() / (T::one() + (-z).exp());
                    *d = dv * sg * (T::one() + z * (T::one() - sg));
                }
            } else {
                dzc.copy_from_slice(dyc);
            }
            let (mut sdz, mut sdzx) = (0f64, 0f64);
            for (&d, &xv) in dzc.iter().zip(xc) {
                let xh = (xv - m) * r;
                sdz += d.to_f64();
                sdzx += (d * xh).to_f64();
            }
            s1 += gm * sdz;
            s2 += gm * sdzx;
            if param_grads {
                let base = total + 2 * bi * c;
                // SAFETY: base + c + ch < total + 2 b c = dx.len() (bi < b, ch < c). Channel ch
                // belongs to group g only, so (bi, ch) is written by task bg = bi·groups + g
                // alone, and these raw writes create no reference to the slots of the sample's
                // other groups (which their tasks write concurrently); the range is disjoint
                // from every task's `dxs`.
                unsafe {
                    out.write(base + ch, T::from_f64(sdzx));
                    out.write(base + c + ch, T::from_f64(sdz));
                }
            }
        }
        let (m1, m2) = (s1 / n as f64, s2 / n as f64);
        for j in 0..cg {
            let ch = g * cg + j;
            let gm = gamma[ch].to_f64();
            let xc = &xs[j * s..(j + 1) * s];
            let dc = &mut dxs[j * s..(j + 1) * s];
            // dx = r (gamma dz - m1 - xhat m2), xhat = (x - mean) r
            let (ka, kb, kc) = (
                T::from_f64(rstd * gm),
                T::from_f64(rstd * rstd * m2),
                T::from_f64(rstd * (mean * rstd * m2 - m1)),
            );
            for (d, &xv) in dc.iter_mut().zip(xc) {
                *d = ka * *d - kb * xv + kc;
            }
        }
    });
    dx
}

fn shape_bcs(l: &Layout) -> candle_core::Result<(usize, usize)> {
    let d = l.dims();
    if d.len() < 3 {
        candle_core::bail!("group_norm: expected [B, C, ...], got {d:?}")
    }
    Ok((d[0], d[1]))
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
        let (b, _) = shape_bcs(l1)?;
        let (g, e, a) = (self.groups, self.eps, self.silu);
        let y = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(gn_fwd::<f32>(
                slice(s1, l1)?,
                slice(s2, l2)?,
                slice(s3, l3)?,
                b,
                g,
                e,
                a,
            )),
            CpuStorage::F64(_) => CpuStorage::F64(gn_fwd::<f64>(
                slice(s1, l1)?,
                slice(s2, l2)?,
                slice(s3, l3)?,
                b,
                g,
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
        let (b, c) = (x.dim(0)?, x.dim(1)?);
        let pg = packed.narrow(0, n, 2 * b * c)?.reshape((b, 2, c))?.sum(0)?;
        Ok((Some(dx), Some(pg.get(0)?), Some(pg.get(1)?)))
    }
}

/// Backward kernel: `x`, `[gamma; beta]`, `dy` → `dx` flattened, then `[B, 2, C]` parameter
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
        let (b, c) = shape_bcs(l1)?;
        let GnOp { groups, eps, silu } = self.fwd;
        let p = self.params;
        let out = match s1 {
            CpuStorage::F32(_) => {
                let gb = slice::<f32>(s2, l2)?;
                CpuStorage::F32(gn_bwd::<f32>(
                    slice(s1, l1)?,
                    &gb[..c],
                    &gb[c..],
                    slice(s3, l3)?,
                    b,
                    groups,
                    eps,
                    silu,
                    p,
                ))
            }
            CpuStorage::F64(_) => {
                let gb = slice::<f64>(s2, l2)?;
                CpuStorage::F64(gn_bwd::<f64>(
                    slice(s1, l1)?,
                    &gb[..c],
                    &gb[c..],
                    slice(s3, l3)?,
                    b,
                    groups,
                    eps,
                    silu,
                    p,
                ))
            }
            _ => candle_core::bail!("group_norm: unsupported dtype {:?}", s1.dtype()),
        };
        let len = l1.shape().elem_count() + if p { 2 * b * c } else { 0 };
        Ok((out, Shape::from(len)))
    }
}
