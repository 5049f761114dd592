//! Configuration of the DDPM network (`config.model` / `config.data` of the reference).

use crate::error::{Error, Result};
use crate::layers::Activation;

/// Configuration of [`Ddpm`](super::Ddpm) (`config.model` / `config.data` of the reference's DDPM configs).
///
/// Every channel count `nf * ch_mult[i]` must be a multiple of [`num_groups`](Self::num_groups)
/// (the reference's fixed 32), and `image_size` divisible by $2^{\text{len(ch\_mult)}-1}$.
#[derive(Debug, Clone, PartialEq)]
pub struct DdpmConfig {
    /// Side of the square input images (`data.image_size`).
    pub image_size: usize,
    /// Image channels (`data.num_channels`).
    pub num_channels: usize,
    /// Base channel count (`model.nf`); the time embedding has `nf` sinusoidal features and a
    /// `4 nf`-wide MLP.
    pub nf: usize,
    /// Channel multiplier per resolution level (`model.ch_mult`).
    pub ch_mult: Vec<usize>,
    /// Residual blocks per level on the way down (`model.num_res_blocks`; one more on the way up).
    pub num_res_blocks: usize,
    /// Feature-map sizes at which self-attention follows the residual blocks
    /// (`model.attn_resolutions`).
    pub attn_resolutions: Vec<usize>,
    /// Dropout probability inside the residual blocks (training only; `model.dropout`).
    pub dropout: f64,
    /// Resample with a 3×3 convolution (`model.resamp_with_conv`): strided conv down,
    /// nearest-neighbour ×2 then conv up; otherwise 2×2 average pooling / plain nearest.
    pub resamp_with_conv: bool,
    /// Condition on the time label (`model.conditional`). The reference's `False` path raises
    /// a `NameError`; here it builds the unconditional network of the JAX original.
    pub conditional: bool,
    /// Inputs are in $[-1, 1]$ (`data.centered`); otherwise $x \mapsto 2x - 1$ first.
    pub centered: bool,
    /// Divide the output by `sigmas[label]` (`model.scale_by_sigma`, the SMLD/VE DDPM config);
    /// the labels must then be integer noise-level indices.
    pub scale_by_sigma: bool,
    /// Nonlinearity (`model.nonlinearity`; `swish` in every DDPM config).
    pub act: Activation,
    /// Groups of every GroupNorm. The reference hard-codes 32 (`nn.GroupNorm(num_groups=32)`,
    /// not a config key: reference configs read as 32), i.e. 4 channels a group at its
    /// `nf = 128`. At `nf = 32` the same 32 groups hold one channel each, instance
    /// normalisation, which removes every channel's per-image mean: the network can then not
    /// output the image mean of the noise it predicts, and under the reverse SDE the samples'
    /// means drift to saturated white or black images (measured on MNIST, 7 Dec 2026: the
    /// trained network's per-image-mean regression on pure noise was 0.05 where 1 is right).
    /// Small presets keep the paper's 4 channels a group instead ([`Self::mnist`]).
    pub num_groups: usize,
    /// Smallest noise level of the `sigmas` buffer (`model.sigma_min`).
    pub sigma_min: f64,
    /// Largest noise level of the `sigmas` buffer (`model.sigma_max`).
    pub sigma_max: f64,
    /// Length of the `sigmas` buffer (`model.num_scales`).
    pub num_scales: usize,
}

impl DdpmConfig {
    /// `configs/vp/ddpm/cifar10.py` (and `cifar10_continuous`, `subvp/cifar10_ddpm_continuous`):
    /// 32×32×3, `nf = 128`, `ch_mult = (1, 2, 2, 2)`, 2 residual blocks, attention at 16,
    /// dropout 0.1, conv resampling, conditional, centered, no `scale_by_sigma`.
    pub fn cifar10() -> Self {
        Self {
            image_size: 32,
            num_channels: 3,
            nf: 128,
            ch_mult: vec![1, 2, 2, 2],
            num_res_blocks: 2,
            attn_resolutions: vec![16],
            dropout: 0.1,
            resamp_with_conv: true,
            conditional: true,
            centered: true,
            scale_by_sigma: false,
            act: Activation::Swish,
            num_groups: 32,
            sigma_min: 0.01,
            sigma_max: 50.0,
            num_scales: 1000,
        }
    }

    /// `configs/ve/cifar10_ddpm.py`: the DDPM network trained as an SMLD (VE, discrete) model:
    /// inputs in $[0, 1]$, output divided by `sigmas[label]`.
    pub fn cifar10_ve() -> Self {
        Self {
            centered: false,
            scale_by_sigma: true,
            ..Self::cifar10()
        }
    }

    /// `configs/vp/ddpm/{celebahq,bedroom,church}.py`: 256×256, `ch_mult = (1, 1, 2, 2, 4, 4)`.
    pub fn celebahq_256() -> Self {
        Self {
            image_size: 256,
            ch_mult: vec![1, 1, 2, 2, 4, 4],
            ..Self::cifar10()
        }
    }

    /// The original DDPM network for the DDPM reproduction on 28×28×1 MNIST on a CPU (not a
    /// paper preset): [`Self::cifar10`]'s architecture at `nf = 16`, `ch_mult = (1, 2, 2)`
    /// (28 → 14 → 7), one residual block per level, attention at 7×7, no dropout, and
    /// `num_groups = 4` so that a GroupNorm group holds 4 channels at the first level and 8
    /// below, as in the paper's network (see [`Self::num_groups`] for why 32 groups fail
    /// here). 275,889 parameters.
    pub fn mnist() -> Self {
        Self {
            image_size: 28,
            num_channels: 1,
            nf: 16,
            ch_mult: vec![1, 2, 2],
            num_res_blocks: 1,
            attn_resolutions: vec![7],
            dropout: 0.0,
            num_groups: 4,
            ..Self::cifar10()
        }
    }

    /// The small configuration of the parity vectors (`net_ddpm_vp`): 16×16×3, `nf = 32`,
    /// `ch_mult = (1, 2)`, 1 residual block, attention at 8, no dropout.
    pub fn small_test() -> Self {
        Self {
            image_size: 16,
            nf: 32,
            ch_mult: vec![1, 2],
            num_res_blocks: 1,
            attn_resolutions: vec![8],
            dropout: 0.0,
            ..Self::cifar10()
        }
    }

    /// Checks sizes and the GroupNorm constraint.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(format!("DdpmConfig: {m}")));
        if self.image_size == 0 || self.num_channels == 0 || self.nf == 0 {
            return bad("image_size, num_channels and nf must be > 0".into());
        }
        if self.ch_mult.is_empty() || self.ch_mult.contains(&0) {
            return bad(format!(
                "ch_mult must be non-empty and positive, got {:?}",
                self.ch_mult
            ));
        }
        if self.num_groups == 0 {
            return bad("num_groups must be > 0".into());
        }
        for m in &self.ch_mult {
            if (self.nf * m).rem_euclid(self.num_groups) != 0 {
                return bad(format!(
                    "channels nf * ch_mult = {} must be a multiple of num_groups = {} \
                     (every GroupNorm has num_groups groups)",
                    self.nf * m,
                    self.num_groups
                ));
            }
        }
        let down = 1usize
            .checked_shl((self.ch_mult.len() - 1) as u32)
            .unwrap_or(0);
        if down == 0 || self.image_size.rem_euclid(down) != 0 {
            return bad(format!(
                "image_size {} must be divisible by 2^(len(ch_mult) - 1)",
                self.image_size
            ));
        }
        let res: Vec<usize> = (0..self.ch_mult.len())
            .map(|i| self.image_size >> i)
            .collect();
        if let Some(r) = self.attn_resolutions.iter().find(|r| !res.contains(r)) {
            return bad(format!(
                "attn_resolutions contains {r}, which is no level of the resolution ladder \
                 {res:?} (image_size / 2^i): the network would have no attention there"
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        if self.scale_by_sigma
            && !(self.sigma_min > 0.0 && self.sigma_max > self.sigma_min && self.num_scales > 0)
        {
            return bad("scale_by_sigma needs 0 < sigma_min < sigma_max and num_scales > 0".into());
        }
        Ok(())
    }

    /// The `sigmas` buffer (`utils.get_sigmas`), float64:
    /// $\sigma_i = \exp(\mathrm{linspace}(\ln\sigma_{\max}, \ln\sigma_{\min}, N))_i$ (descending).
    pub fn sigmas(&self) -> Vec<f64> {
        let (a, b, n) = (self.sigma_max.ln(), self.sigma_min.ln(), self.num_scales);
        (0..n)
            .map(|i| match i {
                _ if n == 1 => a.exp(),
                _ if i == n - 1 => b.exp(),
                _ => (a + i as f64 * ((b - a) / (n - 1) as f64)).exp(),
            })
            .collect()
    }

    /// Reads the DDPM network of a reference config dump (the config, or a file with it
    /// under `config`; see [`crate::ReferenceConfig::from_json`]), then validates.
    ///
    /// Every key `models/ddpm.py` reads must be present (`data.image_size`, `num_channels`,
    /// `centered`; `model.nf`, `ch_mult`, `num_res_blocks`, `attn_resolutions`, `dropout`,
    /// `resamp_with_conv`, `conditional`, `scale_by_sigma`, `nonlinearity`, `sigma_min`,
    /// `sigma_max`, `num_scales`). A key outside the reference's schema, a missing key, a
    /// wrong type, or `model.name` other than `ddpm` is [`Error::Config`] naming the key.
    pub fn from_reference_json(config: &serde_json::Value) -> Result<Self> {
        Self::from_reference(&crate::ReferenceConfig::from_json(config)?)
    }

    pub(crate) fn from_reference(r: &crate::ReferenceConfig) -> Result<Self> {
        use crate::reference::Section as S;
        let (data, m) = (r.section("data"), r.section("model"));
        const WHO: &str = "ddpm";
        if let Some(name) = m.str("name")? {
            if name != "ddpm" {
                return Err(Error::Config(format!(
                    "reference config: `config.model.name` = `{name}` is not `ddpm`"
                )));
            }
        }
        let c = Self {
            image_size: data.req("image_size", WHO, S::usize)?,
            num_channels: data.req("num_channels", WHO, S::usize)?,
            centered: data.req("centered", WHO, S::bool)?,
            nf: m.req("nf", WHO, S::usize)?,
            ch_mult: m.req("ch_mult", WHO, S::usizes)?,
            num_res_blocks: m.req("num_res_blocks", WHO, S::usize)?,
            attn_resolutions: m.req("attn_resolutions", WHO, S::usizes)?,
            dropout: m.req("dropout", WHO, S::f64)?,
            resamp_with_conv: m.req("resamp_with_conv", WHO, S::bool)?,
            conditional: m.req("conditional", WHO, S::bool)?,
            scale_by_sigma: m.req("scale_by_sigma", WHO, S::bool)?,
            act: m.req("nonlinearity", WHO, S::enum_of)?,
            num_groups: 32,
            sigma_min: m.req("sigma_min", WHO, S::f64)?,
            sigma_max: m.req("sigma_max", WHO, S::f64)?,
            num_scales: m.req("num_scales", WHO, S::usize)?,
        };
        c.validate()?;
        Ok(c)
    }
}

impl Default for DdpmConfig {
    /// [`DdpmConfig::cifar10`].
    fn default() -> Self {
        Self::cifar10()
    }
}
