//! Small shared pieces: activation, GroupNorm, `default_init` convolutions and linears, NIN.

use candle_core::{Module, Tensor};
use candle_nn::{Init, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

pub use super::norm::GroupNorm;

use crate::init::default_init;
use crate::{Error, Result};

/// Nonlinearity of a network (`config.model.nonlinearity`, `layers.get_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// $x\,\sigma(x)$ (`swish` / SiLU): every NCSN++ / DDPM++ config of the paper.
    #[default]
    Swish,
    /// $\max(x, 0)$.
    Relu,
    /// ELU with $\alpha = 1$.
    Elu,
    /// Leaky ReLU with slope 0.2 (`lrelu`).
    #[serde(rename = "lrelu")]
    LeakyRelu,
}

impl Activation {
    /// Applies the nonlinearity elementwise.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Swish => candle_nn::ops::silu(x)?,
            Self::Relu => x.relu()?,
            Self::Elu => x.elu(1.0)?,
            Self::LeakyRelu => candle_nn::ops::leaky_relu(x, 0.2)?,
        })
    }
}

/// `nn.GroupNorm(num_groups = min(C / 4, 32), C, eps = 1e-6)` as every NCSN++ block builds it:
/// $y = \gamma\,(x - \mu_g)/\sqrt{\sigma_g^2 + 10^{-6}} + \beta$ over groups of channels.
/// Parameters `weight` (init 1) and `bias` (init 0) of shape `[C]`. On the CPU it runs as one
/// fused kernel ([`GroupNorm`]).
pub fn group_norm(channels: usize, vb: VarBuilder) -> Result<GroupNorm> {
    let groups = (channels / 4).min(32);
    if groups == 0 || !channels.is_multiple_of(groups) {
        return Err(Error::Config(format!(
            "GroupNorm with min(C/4, 32) groups needs C >= 4 divisible by the group count, got C = {channels}"
        )));
    }
    let weight = vb.get_with_hints(channels, "weight", Init::Const(1.0))?;
    let bias = vb.get_with_hints(channels, "bias", Init::Const(0.0))?;
    GroupNorm::new(weight, bias, groups, 1e-6)
}

/// 2-D convolution `weight: [out, in, k, k]`, `bias: [out]`, with symmetric zero `padding` and
/// `stride` (`nn.Conv2d`). Built from scratch it uses the reference's DDPM init
/// (`layers.ddpm_conv3x3` / `ddpm_conv1x1`): weight ~ `default_init(init_scale)`, bias = 0.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    padding: usize,
    stride: usize,
}

impl Conv2d {
    /// Creates or loads `weight` and `bias` under `vb`.
    pub fn new(
        in_ch: usize,
        out_ch: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        init_scale: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        if in_ch == 0 || out_ch == 0 || kernel == 0 || stride == 0 {
            return Err(Error::Config(format!(
                "conv needs positive sizes, got in {in_ch}, out {out_ch}, kernel {kernel}, stride {stride}"
            )));
        }
        let shape: candle_core::Shape = (out_ch, in_ch, kernel, kernel).into();
        let weight =
            vb.get_with_hints(shape.clone(), "weight", default_init(init_scale, &shape))?;
        let bias = vb.get_with_hints(out_ch, "bias", Init::Const(0.0))?;
        Ok(Self {
            weight,
            bias: Some(bias),
            padding,
            stride,
        })
    }

    /// `conv3x3` of the reference: kernel 3, stride 1, padding 1.
    pub fn conv3x3(in_ch: usize, out_ch: usize, init_scale: f64, vb: VarBuilder) -> Result<Self> {
        Self::new(in_ch, out_ch, 3, 1, 1, init_scale, vb)
    }

    /// `conv1x1` of the reference: kernel 1, stride 1, padding 0.
    pub fn conv1x1(in_ch: usize, out_ch: usize, init_scale: f64, vb: VarBuilder) -> Result<Self> {
        Self::new(in_ch, out_ch, 1, 1, 0, init_scale, vb)
    }

    /// The weight `[out, in, k, k]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias `[out]`.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Convolution without the bias.
    pub fn conv_only(&self, x: &Tensor) -> Result<Tensor> {
        super::conv::conv2d(x, &self.weight, self.padding, self.stride)
    }

    /// Adds the bias `[out]` to `h: [B, out, H, W]`.
    pub fn add_bias(&self, h: Tensor) -> Result<Tensor> {
        match &self.bias {
            None => Ok(h),
            Some(b) => Ok(h.broadcast_add(&b.reshape((1, (), 1, 1))?)?),
        }
    }

    /// `x: [B, in, H, W]` → `[B, out, H', W']`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        super::conv::conv2d_bias(
            x,
            &self.weight,
            self.bias.as_ref(),
            self.padding,
            self.stride,
        )
    }
}

/// `nn.Linear` with the reference's init (`default_init()` weight `[out, in]`, zero bias),
/// $y = x W^\top + b$.
pub fn dense(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let shape: candle_core::Shape = (out_dim, in_dim).into();
    let w = vb.get_with_hints(shape.clone(), "weight", default_init(1.0, &shape))?;
    let b = vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?;
    Ok(Linear::new(w, Some(b)))
}

/// Applies a [`Linear`] (`x: [B, in]`).
pub fn linear_forward(l: &Linear, x: &Tensor) -> Result<Tensor> {
    Ok(l.forward(x)?)
}

/// Network-in-network: a per-pixel linear map over channels (`layers.NIN`),
/// $y_{b,:,h,w} = W^\top x_{b,:,h,w} + b$ with `W: [in, out]` (note: **not** `[out, in]`) and
/// `b: [out]`. Init: `W ~ default_init(init_scale)` (0.1 by default in the reference), `b = 0`.
#[derive(Debug, Clone)]
pub struct Nin {
    w: Tensor,
    b: Tensor,
}

impl Nin {
    /// Creates or loads `W` and `b` under `vb`.
    #[doc(alias = "NIN")]
    pub fn new(in_dim: usize, num_units: usize, init_scale: f64, vb: VarBuilder) -> Result<Self> {
        let shape: candle_core::Shape = (in_dim, num_units).into();
        let w = vb.get_with_hints(shape.clone(), "W", default_init(init_scale, &shape))?;
        let b = vb.get_with_hints(num_units, "b", Init::Const(0.0))?;
        Ok(Self { w, b })
    }

    /// Channels-last application: `x: [B, N, in]` → `[B, N, out]`.
    pub fn forward_channels_last(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        let y = x.reshape((b * n, c))?.matmul(&self.w)?;
        let y = super::bias::add_bias_last(&y, &self.b)?;
        Ok(y.reshape((b, n, ()))?)
    }

    /// `x: [B, in, H, W]` → `[B, out, H, W]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let xl = x.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()?;
        let y = self.forward_channels_last(&xl)?;
        Ok(y.transpose(1, 2)?.reshape((b, (), h, w))?)
    }
}
