//! `layerspp.Upsample` / `layerspp.Downsample`.

use candle_core::{Tensor, D};
use candle_nn::{Init, VarBuilder};

use super::common::Conv2d;
use super::fir;
use crate::init::default_init;
use crate::Result;

/// The reference's `up_or_down_sampling.Conv2d` weights (`Conv2d_0.weight: [out, in, 3, 3]`,
/// `Conv2d_0.bias: [out]`, init `default_init()` / 0) used by the FIR resampling convolutions.
#[derive(Debug, Clone)]
pub struct FirConv2d {
    weight: Tensor,
    bias: Tensor,
}

impl FirConv2d {
    fn new(in_ch: usize, out_ch: usize, kernel: usize, vb: VarBuilder) -> Result<Self> {
        let shape: candle_core::Shape = (out_ch, in_ch, kernel, kernel).into();
        let weight = vb.get_with_hints(shape.clone(), "weight", default_init(1.0, &shape))?;
        let bias = vb.get_with_hints(out_ch, "bias", Init::Const(0.0))?;
        Ok(Self { weight, bias })
    }

    fn add_bias(&self, h: Tensor) -> Result<Tensor> {
        Ok(h.broadcast_add(&self.bias.reshape((1, (), 1, 1))?)?)
    }
}

#[derive(Debug, Clone)]
enum UpKind {
    Nearest,
    NearestConv(Conv2d),
    Fir(Vec<f64>),
    FirConv(Vec<f64>, FirConv2d),
}

/// `layerspp.Upsample`: doubles H and W.
///
/// - `fir = false`: nearest-neighbour upsampling, then `Conv_0` (3x3) when `with_conv`. The
///   PyTorch reference cannot run this path (`F.interpolate` receives `'nearest'` as its scale
///   factor); this is what the JAX original does.
/// - `fir = true`, no conv: `upsample_2d(x, fir_kernel)`.
/// - `fir = true`, `with_conv`: the fused `upsample_conv_2d` with `Conv2d_0.{weight,bias}`
///   (also broken in the PyTorch reference; implemented as in the TF/JAX original).
#[derive(Debug, Clone)]
pub struct Upsample {
    kind: UpKind,
}

impl Upsample {
    /// Creates or loads the block under `vb`; `out_ch` defaults to `in_ch`.
    pub fn new(
        in_ch: usize,
        out_ch: Option<usize>,
        with_conv: bool,
        fir: bool,
        fir_kernel: &[f64],
        vb: VarBuilder,
    ) -> Result<Self> {
        let out_ch = out_ch.unwrap_or(in_ch);
        let kind = match (fir, with_conv) {
            (false, false) => UpKind::Nearest,
            (false, true) => {
                UpKind::NearestConv(Conv2d::conv3x3(in_ch, out_ch, 1.0, vb.pp("Conv_0"))?)
            }
            (true, false) => UpKind::Fir(fir::normalized_kernel(fir_kernel)?),
            (true, true) => UpKind::FirConv(
                fir_kernel.to_vec(),
                FirConv2d::new(in_ch, out_ch, 3, vb.pp("Conv2d_0"))?,
            ),
        };
        Ok(Self { kind })
    }

    /// `[B, in, H, W]` → `[B, out, 2H, 2W]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.kind {
            UpKind::Nearest => fir::naive_upsample_2d(x, 2),
            UpKind::NearestConv(c) => c.forward(&fir::naive_upsample_2d(x, 2)?),
            UpKind::Fir(k) => fir::upsample_2d(x, k, 2),
            UpKind::FirConv(k, c) => c.add_bias(fir::upsample_conv_2d(x, &c.weight, k, 2)?),
        }
    }
}

#[derive(Debug, Clone)]
enum DownKind {
    AvgPool,
    PadConv(Conv2d),
    Fir(Vec<f64>),
    FirConv(Vec<f64>, FirConv2d),
}

/// `layerspp.Downsample`: halves H and W.
///
/// - `fir = false`: 2x2 average pooling, or (`with_conv`) zero-pad right/bottom by 1 and a 3x3
///   stride-2 `Conv_0` without padding.
/// - `fir = true`: `downsample_2d(x, fir_kernel)`, or (`with_conv`) the fused
///   `conv_downsample_2d` with `Conv2d_0.{weight,bias}`.
#[derive(Debug, Clone)]
pub struct Downsample {
    kind: DownKind,
}

impl Downsample {
    /// Creates or loads the block under `vb`; `out_ch` defaults to `in_ch`.
    pub fn new(
        in_ch: usize,
        out_ch: Option<usize>,
        with_conv: bool,
        fir: bool,
        fir_kernel: &[f64],
        vb: VarBuilder,
    ) -> Result<Self> {
        let out_ch = out_ch.unwrap_or(in_ch);
        let kind = match (fir, with_conv) {
            (false, false) => DownKind::AvgPool,
            (false, true) => {
                DownKind::PadConv(Conv2d::new(in_ch, out_ch, 3, 2, 0, 1.0, vb.pp("Conv_0"))?)
            }
            (true, false) => DownKind::Fir(fir::normalized_kernel(fir_kernel)?),
            (true, true) => DownKind::FirConv(
                fir_kernel.to_vec(),
                FirConv2d::new(in_ch, out_ch, 3, vb.pp("Conv2d_0"))?,
            ),
        };
        Ok(Self { kind })
    }

    /// `[B, in, H, W]` → `[B, out, H/2, W/2]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.kind {
            DownKind::AvgPool => fir::naive_downsample_2d(x, 2),
            DownKind::PadConv(c) => {
                let xp = x.pad_with_zeros(D::Minus1, 0, 1)?.pad_with_zeros(2, 0, 1)?;
                c.forward(&xp)
            }
            DownKind::Fir(k) => fir::downsample_2d(x, k, 2),
            DownKind::FirConv(k, c) => c.add_bias(fir::conv_downsample_2d(x, &c.weight, k, 2)?),
        }
    }
}
