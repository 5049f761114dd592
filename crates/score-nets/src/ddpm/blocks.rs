//! The DDPM blocks of `models/layers.py` (`ResnetBlockDDPM`, `AttnBlock`, `Downsample`,
//! `Upsample`); every GroupNorm has the same group count (the reference's fixed 32 unless
//! [`DdpmConfig::num_groups`](super::DdpmConfig::num_groups) says otherwise).

use candle_core::{Module, Tensor};
use candle_nn::{Linear, VarBuilder};

use crate::error::Result;
use crate::layers::norm::GroupNorm;
use crate::layers::{dense, dropout, softmax_last, Activation, Conv2d, Nin};

/// `nn.GroupNorm(groups, C, eps = 1e-6)` (`groups` = 32 in the reference), the normalisation
/// of every DDPM block: `weight` (init 1) and `bias` (init 0) of shape `[C]`, run as the fused
/// CPU kernel of [`GroupNorm`].
pub(super) fn group_norm(channels: usize, groups: usize, vb: VarBuilder) -> Result<GroupNorm> {
    if groups == 0 || channels == 0 || !channels.is_multiple_of(groups) {
        return Err(crate::Error::Config(format!(
            "DDPM GroupNorm has {groups} groups: the channel count must be a positive multiple \
             of it, got {channels}"
        )));
    }
    let weight = vb.get_with_hints(channels, "weight", candle_nn::Init::Const(1.0))?;
    let bias = vb.get_with_hints(channels, "bias", candle_nn::Init::Const(0.0))?;
    GroupNorm::new(weight, bias, groups, 1e-6)
}

pub(super) type Rng<'a> = Option<&'a mut dyn sde_core::noise::NoiseSource>;

/// Reborrows the optional dropout generator for one block call.
pub(super) fn reborrow<'s>(
    rng: &'s mut Rng<'_>,
) -> Option<&'s mut dyn sde_core::noise::NoiseSource> {
    match rng {
        Some(r) => Some(&mut **r),
        None => None,
    }
}

/// `layers.ResnetBlockDDPM`:
/// $h = \mathrm{Conv_0}(\mathrm{act}(\mathrm{GN_0}(x))) + \mathrm{Dense_0}(\mathrm{act}(t_{emb}))$,
/// $h = \mathrm{Conv_1}(\mathrm{dropout}(\mathrm{act}(\mathrm{GN_1}(h))))$,
/// $y = \mathrm{NIN_0}(x) + h$ when the channel count changes, else $x + h$ (GroupNorms with
/// `groups` groups, `Conv_1` initialised with scale 0, i.e. 1e-10).
#[derive(Debug, Clone)]
pub(super) struct ResnetBlock {
    group_norm_0: GroupNorm,
    conv_0: Conv2d,
    dense_0: Linear,
    group_norm_1: GroupNorm,
    conv_1: Conv2d,
    nin_0: Option<Nin>,
}

impl ResnetBlock {
    pub(super) fn new(
        in_ch: usize,
        out_ch: usize,
        temb_dim: usize,
        groups: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            group_norm_0: group_norm(in_ch, groups, vb.pp("GroupNorm_0"))?,
            conv_0: Conv2d::conv3x3(in_ch, out_ch, 1.0, vb.pp("Conv_0"))?,
            // Built even for an unconditional network, as the reference's class does.
            dense_0: dense(temb_dim, out_ch, vb.pp("Dense_0"))?,
            group_norm_1: group_norm(out_ch, groups, vb.pp("GroupNorm_1"))?,
            conv_1: Conv2d::conv3x3(out_ch, out_ch, 0.0, vb.pp("Conv_1"))?,
            nin_0: if in_ch != out_ch {
                Some(Nin::new(in_ch, out_ch, 0.1, vb.pp("NIN_0"))?)
            } else {
                None
            },
        })
    }

    pub(super) fn forward(
        &self,
        x: &Tensor,
        temb: Option<&Tensor>,
        act: Activation,
        p: f64,
        rng: Rng<'_>,
    ) -> Result<Tensor> {
        let h = self.group_norm_0.forward_act(x, act)?;
        let mut h = self.conv_0.forward(&h)?;
        if let Some(t) = temb {
            let e = self.dense_0.forward(&act.apply(t)?)?;
            h = h.broadcast_add(&e.unsqueeze(2)?.unsqueeze(3)?)?;
        }
        let h = self.group_norm_1.forward_act(&h, act)?;
        let h = dropout(&h, p, rng)?;
        let h = self.conv_1.forward(&h)?;
        let x = match &self.nin_0 {
            Some(nin) => nin.forward(x)?,
            None => x.clone(),
        };
        Ok((x + h)?)
    }
}

/// `layers.AttnBlock`: $h = \mathrm{GN}(x)$, $q, k, v = \mathrm{NIN}_{0,1,2}(h)$,
/// $w = \mathrm{softmax}(q^\top k / \sqrt C)$ over all $HW$ positions,
/// $y = x + \mathrm{NIN}_3(v w^\top)$ (GroupNorm with `groups` groups, no rescaling).
#[derive(Debug, Clone)]
pub(super) struct AttnBlock {
    group_norm_0: GroupNorm,
    nin: [Nin; 4],
}

impl AttnBlock {
    pub(super) fn new(channels: usize, groups: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            group_norm_0: group_norm(channels, groups, vb.pp("GroupNorm_0"))?,
            nin: [
                Nin::new(channels, channels, 0.1, vb.pp("NIN_0"))?,
                Nin::new(channels, channels, 0.1, vb.pp("NIN_1"))?,
                Nin::new(channels, channels, 0.1, vb.pp("NIN_2"))?,
                Nin::new(channels, channels, 0.0, vb.pp("NIN_3"))?,
            ],
        })
    }

    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let hn = self.group_norm_0.forward(x)?;
        let hl = hn.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()?;
        let q = self.nin[0].forward_channels_last(&hl)?;
        let k = self.nin[1].forward_channels_last(&hl)?;
        let v = self.nin[2].forward_channels_last(&hl)?;
        let scores = (q.matmul(&k.transpose(1, 2)?.contiguous()?)? * (c as f64).powf(-0.5))?;
        let a = softmax_last(&scores)?;
        let o = self.nin[3].forward_channels_last(&a.matmul(&v)?)?;
        let o = o.transpose(1, 2)?.reshape((b, c, h, w))?;
        Ok((x + o)?)
    }
}

/// `layers.Downsample`: with a conv, pad one zero row/column at the bottom/right ("SAME" as in
/// TensorFlow) then a stride-2 3×3 conv with no padding; else 2×2 average pooling.
#[derive(Debug, Clone)]
pub(super) struct Downsample(Option<Conv2d>);

impl Downsample {
    pub(super) fn new(channels: usize, with_conv: bool, vb: VarBuilder) -> Result<Self> {
        Ok(Self(if with_conv {
            Some(Conv2d::new(
                channels,
                channels,
                3,
                2,
                0,
                1.0,
                vb.pp("Conv_0"),
            )?)
        } else {
            None
        }))
    }

    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.0 {
            Some(conv) => conv.forward(&x.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?),
            None => Ok(x.avg_pool2d(2)?),
        }
    }
}

/// `layers.Upsample`: nearest-neighbour ×2 (`F.interpolate(mode='nearest')`), then a 3×3
/// conv when `with_conv`.
#[derive(Debug, Clone)]
pub(super) struct Upsample(Option<Conv2d>);

impl Upsample {
    pub(super) fn new(channels: usize, with_conv: bool, vb: VarBuilder) -> Result<Self> {
        Ok(Self(if with_conv {
            Some(Conv2d::conv3x3(channels, channels, 1.0, vb.pp("Conv_0"))?)
        } else {
            None
        }))
    }

    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let up = crate::layers::fir::naive_upsample_2d(x, 2)?;
        match &self.0 {
            Some(conv) => conv.forward(&up),
            None => Ok(up),
        }
    }
}
