//! The convolution primitive used by every block, with a fast backward pass.
//!
//! Candle's `conv2d` backward always computes the kernel gradient (even for constant weights,
//! as a convolution whose kernel is the whole output gradient) and computes the input gradient
//! with `conv_transpose2d`, whose CPU kernel is a direct loop: a forward + input-vjp costs ~7x
//! the forward. [`conv2d`] avoids both when a gradient will be needed (the input or the weight
//! tracks operations):
//!
//! - on the CPU, a custom op runs the forward convolution and computes the input gradient per
//!   image as $\nabla_x = \mathrm{col2im}(W^\top \nabla_y)$, $W$ the `[out, in·kh·kw]` kernel
//!   matrix read transposed in place by the GEMM (the adjoint of im2col + GEMM: the same
//!   multiply-adds as the forward, none on the zeros of a dilated gradient for strided
//!   convolutions); the kernel gradient is computed only when the kernel tracks gradients;
//! - on other devices, an im2col made of shifted slices (`narrow`, whose backward is a zero pad)
//!   and a batched GEMM (whose backward is two GEMMs).
//!
//! Candle's CPU forward kernel (tiled im2col with a scalar gather) is itself about twice as slow
//! as an im2col followed by a GEMM, so on the CPU every forward convolution and input gradient
//! runs a dedicated kernel: 3x3 stride-1 convolutions of images of 8x8 and more by Winograd's
//! F(2x2, 3x3) (2.25x fewer multiply–adds), the others by per-image im2col into a reused buffer
//! (none for 1x1 kernels) and one GEMM per image writing the output with the bias folded in. The
//! kernel gradient (training) is Σ_b ∇y_b · im2col(x_b)ᵀ, one GEMM per image accumulated per
//! thread. Other devices use Candle's kernel when no gradient is tracked.

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, WithDType,
};

use crate::{Error, Result};
use sde_kernels::conv::{self as kernels, Conv2dGeom as Geom};
use sde_kernels::float::Float;

/// 2-D cross-correlation `x: [B, in, H, W]`, `w: [out, in, kh, kw]` with symmetric zero
/// padding and stride (`F.conv2d`): $y_{b,o,i,j} = \sum_{c,u,v} w_{o,c,u,v}\,
/// x_{b,c,s i+u-p,\,s j+v-p}$.
pub fn conv2d(x: &Tensor, w: &Tensor, padding: usize, stride: usize) -> Result<Tensor> {
    conv2d_bias(x, w, None, padding, stride)
}

/// [`conv2d`] plus a per-channel bias `[out]`:
/// $y_{b,o,i,j} = \beta_o + \sum_{c,u,v} w_{o,c,u,v}\, x_{b,c,s i+u-p,\,s j+v-p}$.
/// On the CPU the bias is the GEMM's initial value (no separate pass over the output).
pub fn conv2d_bias(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
    stride: usize,
) -> Result<Tensor> {
    let (b, c, h, wd) = x.dims4()?;
    let (o, ci, kh, kw) = w.dims4()?;
    if ci != c || stride == 0 || kh == 0 || kw == 0 || h + 2 * padding < kh || wd + 2 * padding < kw
    {
        return Err(Error::Input(format!(
            "conv2d: input {:?} does not fit kernel {:?} (padding {padding}, stride {stride})",
            x.dims(),
            w.dims()
        )));
    }
    let dt = x.dtype();
    let cpu = x.device().is_cpu()
        && matches!(dt, DType::F32 | DType::F64)
        && w.dtype() == dt
        && bias.iter().all(|t| t.dtype() == dt);
    if cpu {
        let op = ConvOp {
            input_grad: false,
            geom: Geom {
                b,
                c,
                h,
                w: wd,
                o,
                kh,
                kw,
                pad: padding,
                stride,
            },
        };
        let (x, w) = (x.contiguous()?, w.contiguous()?);
        return Ok(match bias {
            Some(bt) => x.apply_op3(&w, &bt.reshape(o)?.contiguous()?, op)?,
            None => x.apply_op2(&w, op)?,
        });
    }
    let y = if cpu || x.track_op() || w.track_op() {
        conv2d_im2col(x, w, padding, stride)?
    } else {
        x.conv2d(w, padding, stride, 1, 1)?
    };
    match bias {
        None => Ok(y),
        Some(bt) => Ok(y.broadcast_add(&bt.reshape((1, (), 1, 1))?)?),
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

/// The CPU convolution (`sde_kernels::conv`, `sde_kernels::winograd`) as a custom op (`x`, `w`
/// and optionally the bias) with an efficient backward pass.
#[derive(Debug, Clone, Copy)]
struct ConvOp {
    geom: Geom,
    /// Compute the input gradient of the convolution instead: operands `(grad_y, w)`, result
    /// `[B, C, H, W]`.
    input_grad: bool,
}

/// The values of a contiguous CPU operand of a custom op (the layers' CPU kernels take their
/// operands contiguous).
pub(super) fn slice<'a, T: WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
) -> candle_core::Result<&'a [T]> {
    let (a, b) = l.contiguous_offsets().ok_or_else(|| {
        candle_core::Error::Msg("score-nets CPU kernel: non-contiguous operand".into())
    })?;
    Ok(&T::cpu_storage_as_slice(s)?[a..b])
}

impl ConvOp {
    fn run(
        &self,
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = &self.geom;
        let (ho, wo) = g.out_hw();
        let shape = if self.input_grad {
            Shape::from((g.b, g.c, g.h, g.w))
        } else {
            Shape::from((g.b, g.o, ho, wo))
        };
        fn go<T: WithDType + Float>(
            op: &ConvOp,
            x: (&CpuStorage, &Layout),
            w: (&CpuStorage, &Layout),
            bias: Option<(&CpuStorage, &Layout)>,
        ) -> candle_core::Result<Vec<T>> {
            let g = &op.geom;
            let wk = slice::<T>(w.0, w.1)?;
            if op.input_grad {
                return Ok(kernels::conv2d_input_grad(slice::<T>(x.0, x.1)?, wk, g));
            }
            let bias = bias.map(|(s, l)| slice::<T>(s, l)).transpose()?;
            Ok(kernels::conv2d(slice::<T>(x.0, x.1)?, wk, bias, g))
        }
        let y = match x.0 {
            CpuStorage::F32(_) => CpuStorage::F32(go::<f32>(self, x, w, bias)?),
            CpuStorage::F64(_) => CpuStorage::F64(go::<f64>(self, x, w, bias)?),
            s => candle_core::bail!("conv2d: unsupported dtype {:?}", s.dtype()),
        };
        Ok((y, shape))
    }

    /// Input and kernel gradients (each only when tracked).
    fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let to_c = |e: Error| candle_core::Error::Msg(e.to_string());
        let Geom {
            o,
            c,
            kh,
            kw,
            pad: p,
            stride: s,
            ..
        } = self.geom;
        let grad = grad.detach();
        let gx = if x.track_op() {
            let op = ConvOp {
                geom: self.geom,
                input_grad: true,
            };
            Some(
                grad.contiguous()?
                    .apply_op2_no_bwd(&w.detach().contiguous()?, &op)?,
            )
        } else {
            None
        };
        let gw = if w.track_op() && x.device().is_cpu() {
            let op = KernelGradOp { geom: self.geom };
            Some(
                x.detach()
                    .contiguous()?
                    .apply_op2_no_bwd(&grad.contiguous()?, &op)?,
            )
        } else if w.track_op() {
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

/// The bias gradient of the CPU convolution: `[B, O, H, W]` → `[O]`, Σ_b Σ_{h,w}
/// (`sde_kernels::conv::channel_sum`: one pass with eight partial sums per channel; candle's
/// generic strided `sum` was a serial scalar loop).
#[derive(Debug, Clone, Copy)]
struct ChannelSumOp;

impl CustomOp1 for ChannelSumOp {
    fn name(&self) -> &'static str {
        "score-nets-channel-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = l.dims();
        if dims.len() < 2 {
            candle_core::bail!("channel sum: expected [B, C, ...], got {dims:?}");
        }
        let (b, c) = (dims[0], dims[1]);
        let n: usize = dims[2..].iter().product();
        let out = match s {
            CpuStorage::F32(_) => {
                CpuStorage::F32(kernels::channel_sum(slice::<f32>(s, l)?, b, c, n))
            }
            CpuStorage::F64(_) => {
                CpuStorage::F64(kernels::channel_sum(slice::<f64>(s, l)?, b, c, n))
            }
            s => candle_core::bail!("channel sum: unsupported dtype {:?}", s.dtype()),
        };
        Ok((out, Shape::from(c)))
    }
}

/// The kernel gradient of the CPU convolution (operands `(x, grad_y)`, result
/// `[O, C, kh, kw]`): `sde_kernels::conv::conv2d_kernel_grad`.
#[derive(Debug, Clone, Copy)]
struct KernelGradOp {
    geom: Geom,
}

impl CustomOp2 for KernelGradOp {
    fn name(&self) -> &'static str {
        "score-nets-conv2d-kernel-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = &self.geom;
        let shape = Shape::from((g.o, g.c, g.kh, g.kw));
        let gw = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(kernels::conv2d_kernel_grad(
                slice::<f32>(s1, l1)?,
                slice::<f32>(s2, l2)?,
                g,
            )),
            CpuStorage::F64(_) => CpuStorage::F64(kernels::conv2d_kernel_grad(
                slice::<f64>(s1, l1)?,
                slice::<f64>(s2, l2)?,
                g,
            )),
            s => candle_core::bail!("conv2d kernel gradient: unsupported dtype {:?}", s.dtype()),
        };
        Ok((gw, shape))
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
        self.run((s1, l1), (s2, l2), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        self.grads(x, w, grad)
    }
}

impl CustomOp3 for ConvOp {
    fn name(&self) -> &'static str {
        "score-nets-conv2d-bias"
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
        self.run((s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (gx, gw) = self.grads(x, w, grad)?;
        let gb = if bias.track_op() && grad.device().is_cpu() {
            Some(grad.contiguous()?.apply_op1_no_bwd(&ChannelSumOp)?)
        } else if bias.track_op() {
            Some(grad.sum((0, 2, 3))?)
        } else {
            None
        };
        Ok((gx, gw, gb))
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
