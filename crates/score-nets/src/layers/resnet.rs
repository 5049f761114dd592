//! Residual blocks of NCSN++ / DDPM++ (`layerspp.ResnetBlockDDPMpp`, `ResnetBlockBigGANpp`).

use candle_core::Tensor;
use candle_nn::{Linear, Module, VarBuilder};

use super::common::{dense, group_norm, Activation, Conv2d, GroupNorm, Nin};
use super::{dropout, fir};
use crate::{Error, Result};

/// Options shared by both residual block types.
#[derive(Debug, Clone, PartialEq)]
pub struct ResnetOptions {
    /// Nonlinearity (`act`).
    pub act: Activation,
    /// Dropout probability before `Conv_1` (training only).
    pub dropout: f64,
    /// Divide the residual sum by $\sqrt 2$.
    pub skip_rescale: bool,
    /// `default_init` scale of `Conv_1` (0 means 1e-10, as in the reference).
    pub init_scale: f64,
    /// Size of the time embedding; `None` builds no `Dense_0` (unconditional network).
    pub temb_dim: Option<usize>,
}

fn add_temb(
    h: Tensor,
    dense_0: &Option<Linear>,
    temb: Option<&Tensor>,
    act: Activation,
) -> Result<Tensor> {
    match (dense_0, temb) {
        (Some(d), Some(t)) => {
            let e = d.forward(&act.apply(t)?)?;
            Ok(h.broadcast_add(&e.unsqueeze(2)?.unsqueeze(3)?)?)
        }
        (None, None) => Ok(h),
        (Some(_), None) => Err(Error::Input(
            "conditional residual block called without a time embedding".into(),
        )),
        (None, Some(_)) => Ok(h),
    }
}

fn rescale(x: Tensor, h: Tensor, skip_rescale: bool) -> Result<Tensor> {
    let y = (x + h)?;
    Ok(if skip_rescale {
        (y / std::f64::consts::SQRT_2)?
    } else {
        y
    })
}

/// `layerspp.ResnetBlockDDPMpp`:
/// $h = \mathrm{Conv_0}(\mathrm{act}(\mathrm{GN_0}(x))) + \mathrm{Dense_0}(\mathrm{act}(t_{emb}))$,
/// $h = \mathrm{Conv_1}(\mathrm{dropout}(\mathrm{act}(\mathrm{GN_1}(h))))$,
/// $y = (s(x) + h)$ [$/\sqrt2$], where the shortcut $s$ is `NIN_0` (or the 3x3 `Conv_2` with
/// `conv_shortcut`) when the channel count changes, else the identity.
#[derive(Debug, Clone)]
pub struct ResnetBlockDdpmPp {
    group_norm_0: GroupNorm,
    conv_0: Conv2d,
    dense_0: Option<Linear>,
    group_norm_1: GroupNorm,
    conv_1: Conv2d,
    shortcut: Option<Shortcut>,
    opts: ResnetOptions,
}

#[derive(Debug, Clone)]
enum Shortcut {
    Nin(Nin),
    Conv(Conv2d),
}

impl ResnetBlockDdpmPp {
    /// Creates or loads the block under `vb`; `out_ch` defaults to `in_ch`.
    #[doc(alias = "ResnetBlockDDPMpp")]
    pub fn new(
        in_ch: usize,
        out_ch: Option<usize>,
        conv_shortcut: bool,
        opts: ResnetOptions,
        vb: VarBuilder,
    ) -> Result<Self> {
        let out_ch = out_ch.unwrap_or(in_ch);
        let group_norm_0 = group_norm(in_ch, vb.pp("GroupNorm_0"))?;
        let conv_0 = Conv2d::conv3x3(in_ch, out_ch, 1.0, vb.pp("Conv_0"))?;
        let dense_0 = match opts.temb_dim {
            Some(d) => Some(dense(d, out_ch, vb.pp("Dense_0"))?),
            None => None,
        };
        let group_norm_1 = group_norm(out_ch, vb.pp("GroupNorm_1"))?;
        let conv_1 = Conv2d::conv3x3(out_ch, out_ch, opts.init_scale, vb.pp("Conv_1"))?;
        let shortcut = if in_ch != out_ch {
            Some(if conv_shortcut {
                Shortcut::Conv(Conv2d::conv3x3(in_ch, out_ch, 1.0, vb.pp("Conv_2"))?)
            } else {
                Shortcut::Nin(Nin::new(in_ch, out_ch, 0.1, vb.pp("NIN_0"))?)
            })
        } else {
            None
        };
        Ok(Self {
            group_norm_0,
            conv_0,
            dense_0,
            group_norm_1,
            conv_1,
            shortcut,
            opts,
        })
    }

    /// `x: [B, in, H, W]`, `temb: [B, temb_dim]` → `[B, out, H, W]`. `rng` enables dropout.
    pub fn forward(
        &self,
        x: &Tensor,
        temb: Option<&Tensor>,
        rng: Option<&mut dyn sde_core::noise::NoiseSource>,
    ) -> Result<Tensor> {
        let act = self.opts.act;
        let h = self.group_norm_0.forward_act(x, act)?;
        let h = self.conv_0.forward(&h)?;
        let h = add_temb(h, &self.dense_0, temb, act)?;
        let h = self.group_norm_1.forward_act(&h, act)?;
        let h = dropout::dropout(&h, self.opts.dropout, rng)?;
        let h = self.conv_1.forward(&h)?;
        let x = match &self.shortcut {
            None => x.clone(),
            Some(Shortcut::Nin(n)) => n.forward(x)?,
            Some(Shortcut::Conv(c)) => c.forward(x)?,
        };
        rescale(x, h, self.opts.skip_rescale)
    }
}

/// Resampling done inside a BigGAN block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    /// No resampling.
    None,
    /// Double H and W.
    Up,
    /// Halve H and W.
    Down,
}

/// `layerspp.ResnetBlockBigGANpp`: like [`ResnetBlockDdpmPp`], but it can resample: after
/// $\mathrm{act}(\mathrm{GN_0}(x))$ both that activation $h$ and the raw shortcut $x$ are up- or
/// downsampled (FIR `upsample_2d`/`downsample_2d` with `fir`, else nearest / box), and the shortcut
/// is the 1x1 `Conv_2` when channels change or when resampling.
#[derive(Debug, Clone)]
pub struct ResnetBlockBigGanPp {
    group_norm_0: GroupNorm,
    conv_0: Conv2d,
    dense_0: Option<Linear>,
    group_norm_1: GroupNorm,
    conv_1: Conv2d,
    conv_2: Option<Conv2d>,
    resample: Resample,
    fir_kernel: Option<Vec<f64>>,
    opts: ResnetOptions,
}

impl ResnetBlockBigGanPp {
    /// Creates or loads the block under `vb`; `out_ch` defaults to `in_ch`; `fir_kernel: None`
    /// selects naive (nearest / box) resampling.
    #[doc(alias = "ResnetBlockBigGANpp")]
    pub fn new(
        in_ch: usize,
        out_ch: Option<usize>,
        resample: Resample,
        fir_kernel: Option<&[f64]>,
        opts: ResnetOptions,
        vb: VarBuilder,
    ) -> Result<Self> {
        let out_ch = out_ch.unwrap_or(in_ch);
        let group_norm_0 = group_norm(in_ch, vb.pp("GroupNorm_0"))?;
        let conv_0 = Conv2d::conv3x3(in_ch, out_ch, 1.0, vb.pp("Conv_0"))?;
        let dense_0 = match opts.temb_dim {
            Some(d) => Some(dense(d, out_ch, vb.pp("Dense_0"))?),
            None => None,
        };
        let group_norm_1 = group_norm(out_ch, vb.pp("GroupNorm_1"))?;
        let conv_1 = Conv2d::conv3x3(out_ch, out_ch, opts.init_scale, vb.pp("Conv_1"))?;
        let conv_2 = if in_ch != out_ch || resample != Resample::None {
            Some(Conv2d::conv1x1(in_ch, out_ch, 1.0, vb.pp("Conv_2"))?)
        } else {
            None
        };
        let fir_kernel = match fir_kernel {
            Some(k) => Some(fir::normalized_kernel(k)?),
            None => None,
        };
        Ok(Self {
            group_norm_0,
            conv_0,
            dense_0,
            group_norm_1,
            conv_1,
            conv_2,
            resample,
            fir_kernel,
            opts,
        })
    }

    fn resample(&self, x: &Tensor) -> Result<Tensor> {
        match (self.resample, &self.fir_kernel) {
            (Resample::None, _) => Ok(x.clone()),
            (Resample::Up, Some(k)) => fir::upsample_2d(x, k, 2),
            (Resample::Up, None) => fir::naive_upsample_2d(x, 2),
            (Resample::Down, Some(k)) => fir::downsample_2d(x, k, 2),
            (Resample::Down, None) => fir::naive_downsample_2d(x, 2),
        }
    }

    /// `x: [B, in, H, W]`, `temb: [B, temb_dim]` → `[B, out, H', W']`. `rng` enables dropout.
    pub fn forward(
        &self,
        x: &Tensor,
        temb: Option<&Tensor>,
        rng: Option<&mut dyn sde_core::noise::NoiseSource>,
    ) -> Result<Tensor> {
        let act = self.opts.act;
        let h = self.group_norm_0.forward_act(x, act)?;
        let h = self.resample(&h)?;
        let x = self.resample(x)?;
        let h = self.conv_0.forward(&h)?;
        let h = add_temb(h, &self.dense_0, temb, act)?;
        let h = self.group_norm_1.forward_act(&h, act)?;
        let h = dropout::dropout(&h, self.opts.dropout, rng)?;
        let h = self.conv_1.forward(&h)?;
        let x = match &self.conv_2 {
            Some(c) => c.forward(&x)?,
            None => x,
        };
        rescale(x, h, self.opts.skip_rescale)
    }
}
