//! Configuration of the DDPM network (`config.model` / `config.data` of the reference).

use crate::error::{Error, Result};
use crate::layers::Activation;

/// Configuration of [`Ddpm`](super::Ddpm) (`config.model` / `config.data` of the reference's DDPM configs).
///
/// Every channel count `nf * ch_mult[i]` must be a multiple of 32 (the fixed GroupNorm group
/// count), and `image_size` divisible by $2^{\text{len(ch\_mult)}-1}$.
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
        for m in &self.ch_mult {
            if (self.nf * m).rem_euclid(32) != 0 {
                return bad(format!(
                    "channels nf * ch_mult = {} must be a multiple of 32 (GroupNorm with 32 groups)",
                    self.nf * m
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

    /// Reads `model` and `data` of a JSON dump of a reference config (as in the parity
    /// vectors' `.json`, under `config`), missing keys from [`DdpmConfig::cifar10`], then
    /// validates. Only keys the DDPM network uses are read.
    pub fn from_reference_json(config: &serde_json::Value) -> Result<Self> {
        use serde_json::Value;
        let mut c = Self::cifar10();
        let err = |k: &str| Error::Config(format!("reference config: bad `{k}`"));
        let model = config.get("model").unwrap_or(&Value::Null);
        let data = config.get("data").unwrap_or(&Value::Null);
        let get_usize = |v: &Value, k: &str| -> Result<Option<usize>> {
            v.get(k)
                .map(|x| x.as_u64().map(|u| u as usize).ok_or_else(|| err(k)))
                .transpose()
        };
        let get_bool = |v: &Value, k: &str| -> Result<Option<bool>> {
            v.get(k)
                .map(|x| x.as_bool().ok_or_else(|| err(k)))
                .transpose()
        };
        let get_f64 = |v: &Value, k: &str| -> Result<Option<f64>> {
            v.get(k)
                .map(|x| x.as_f64().ok_or_else(|| err(k)))
                .transpose()
        };
        let get_vec = |v: &Value, k: &str| -> Result<Option<Vec<usize>>> {
            v.get(k)
                .map(|x| {
                    x.as_array()
                        .ok_or_else(|| err(k))?
                        .iter()
                        .map(|e| e.as_u64().map(|u| u as usize).ok_or_else(|| err(k)))
                        .collect()
                })
                .transpose()
        };
        if let Some(name) = model.get("name").and_then(Value::as_str) {
            if name != "ddpm" {
                return Err(Error::Config(format!(
                    "reference config is for model `{name}`, not `ddpm`"
                )));
            }
        }
        c.image_size = get_usize(data, "image_size")?.unwrap_or(c.image_size);
        c.num_channels = get_usize(data, "num_channels")?.unwrap_or(c.num_channels);
        c.centered = get_bool(data, "centered")?.unwrap_or(c.centered);
        c.nf = get_usize(model, "nf")?.unwrap_or(c.nf);
        c.ch_mult = get_vec(model, "ch_mult")?.unwrap_or(c.ch_mult);
        c.num_res_blocks = get_usize(model, "num_res_blocks")?.unwrap_or(c.num_res_blocks);
        c.attn_resolutions = get_vec(model, "attn_resolutions")?.unwrap_or(c.attn_resolutions);
        c.dropout = get_f64(model, "dropout")?.unwrap_or(c.dropout);
        c.resamp_with_conv = get_bool(model, "resamp_with_conv")?.unwrap_or(c.resamp_with_conv);
        c.conditional = get_bool(model, "conditional")?.unwrap_or(c.conditional);
        c.scale_by_sigma = get_bool(model, "scale_by_sigma")?.unwrap_or(c.scale_by_sigma);
        c.sigma_min = get_f64(model, "sigma_min")?.unwrap_or(c.sigma_min);
        c.sigma_max = get_f64(model, "sigma_max")?.unwrap_or(c.sigma_max);
        c.num_scales = get_usize(model, "num_scales")?.unwrap_or(c.num_scales);
        if let Some(a) = model.get("nonlinearity") {
            let s = a
                .as_str()
                .ok_or_else(|| err("nonlinearity"))?
                .to_lowercase();
            c.act = serde_json::from_value(Value::String(s)).map_err(|_| err("nonlinearity"))?;
        }
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
