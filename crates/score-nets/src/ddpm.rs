//! The original DDPM network (Ho et al. 2020), the reference's `models/ddpm.py`, with its own
//! blocks from `models/layers.py` (`ResnetBlockDDPM`, `AttnBlock`, `Downsample`, `Upsample`):
//! unlike NCSN++ every GroupNorm has a fixed 32 groups.

use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{DType, Module, Tensor};
use candle_nn::{GroupNorm, Linear, VarBuilder};
use rand::SeedableRng;

use crate::error::{Error, Result};
use crate::layers::{
    dense, dropout, get_timestep_embedding, softmax_last, Activation, Conv2d, Nin,
};

/// Configuration of [`Ddpm`] (`config.model` / `config.data` of the reference's DDPM configs).
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

/// `nn.GroupNorm(32, C, eps = 1e-6)`, the normalisation of every DDPM block.
fn group_norm32(channels: usize, vb: VarBuilder) -> Result<GroupNorm> {
    Ok(candle_nn::group_norm(32, channels, 1e-6, vb)?)
}

type Rng<'a> = Option<&'a mut dyn rand::RngCore>;

/// Reborrows the optional dropout generator for one block call.
fn reborrow<'s>(rng: &'s mut Rng<'_>) -> Option<&'s mut dyn rand::RngCore> {
    match rng {
        Some(r) => Some(&mut **r),
        None => None,
    }
}

/// `layers.ResnetBlockDDPM`:
/// $h = \mathrm{Conv_0}(\mathrm{act}(\mathrm{GN_0}(x))) + \mathrm{Dense_0}(\mathrm{act}(t_{emb}))$,
/// $h = \mathrm{Conv_1}(\mathrm{dropout}(\mathrm{act}(\mathrm{GN_1}(h))))$,
/// $y = \mathrm{NIN_0}(x) + h$ when the channel count changes, else $x + h$ (GroupNorms with
/// 32 groups, `Conv_1` initialised with scale 0, i.e. 1e-10).
#[derive(Debug, Clone)]
struct ResnetBlock {
    group_norm_0: GroupNorm,
    conv_0: Conv2d,
    dense_0: Linear,
    group_norm_1: GroupNorm,
    conv_1: Conv2d,
    nin_0: Option<Nin>,
}

impl ResnetBlock {
    fn new(in_ch: usize, out_ch: usize, temb_dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            group_norm_0: group_norm32(in_ch, vb.pp("GroupNorm_0"))?,
            conv_0: Conv2d::conv3x3(in_ch, out_ch, 1.0, vb.pp("Conv_0"))?,
            // Built even for an unconditional network, as the reference's class does.
            dense_0: dense(temb_dim, out_ch, vb.pp("Dense_0"))?,
            group_norm_1: group_norm32(out_ch, vb.pp("GroupNorm_1"))?,
            conv_1: Conv2d::conv3x3(out_ch, out_ch, 0.0, vb.pp("Conv_1"))?,
            nin_0: if in_ch != out_ch {
                Some(Nin::new(in_ch, out_ch, 0.1, vb.pp("NIN_0"))?)
            } else {
                None
            },
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        temb: Option<&Tensor>,
        act: Activation,
        p: f64,
        rng: Rng<'_>,
    ) -> Result<Tensor> {
        let h = act.apply(&self.group_norm_0.forward(x)?)?;
        let mut h = self.conv_0.forward(&h)?;
        if let Some(t) = temb {
            let e = self.dense_0.forward(&act.apply(t)?)?;
            h = h.broadcast_add(&e.unsqueeze(2)?.unsqueeze(3)?)?;
        }
        let h = act.apply(&self.group_norm_1.forward(&h)?)?;
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
/// $y = x + \mathrm{NIN}_3(v w^\top)$ (GroupNorm with 32 groups, no rescaling).
#[derive(Debug, Clone)]
struct AttnBlock {
    group_norm_0: GroupNorm,
    nin: [Nin; 4],
}

impl AttnBlock {
    fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            group_norm_0: group_norm32(channels, vb.pp("GroupNorm_0"))?,
            nin: [
                Nin::new(channels, channels, 0.1, vb.pp("NIN_0"))?,
                Nin::new(channels, channels, 0.1, vb.pp("NIN_1"))?,
                Nin::new(channels, channels, 0.1, vb.pp("NIN_2"))?,
                Nin::new(channels, channels, 0.0, vb.pp("NIN_3"))?,
            ],
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
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
struct Downsample(Option<Conv2d>);

impl Downsample {
    fn new(channels: usize, with_conv: bool, vb: VarBuilder) -> Result<Self> {
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

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.0 {
            Some(conv) => conv.forward(&x.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?),
            None => Ok(x.avg_pool2d(2)?),
        }
    }
}

/// `layers.Upsample`: nearest-neighbour ×2 (`F.interpolate(mode='nearest')`), then a 3×3
/// conv when `with_conv`.
#[derive(Debug, Clone)]
struct Upsample(Option<Conv2d>);

impl Upsample {
    fn new(channels: usize, with_conv: bool, vb: VarBuilder) -> Result<Self> {
        Ok(Self(if with_conv {
            Some(Conv2d::conv3x3(channels, channels, 1.0, vb.pp("Conv_0"))?)
        } else {
            None
        }))
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        // Nearest ×2 through broadcasting (differentiable on every backend).
        let up = x
            .reshape((b, c, h, 1, w, 1))?
            .broadcast_as((b, c, h, 2, w, 2))?
            .reshape((b, c, 2 * h, 2 * w))?;
        match &self.0 {
            Some(conv) => conv.forward(&up),
            None => Ok(up),
        }
    }
}

#[derive(Debug, Clone)]
enum Block {
    Dense(Linear),
    Conv(Conv2d),
    Res(ResnetBlock),
    Attn(AttnBlock),
    Down(Downsample),
    Up(Upsample),
    Norm(GroupNorm),
}

/// The DDPM U-Net (`models/ddpm.py`, `DDPM`), mirroring the reference module for module so
/// that its `state_dict` names (`all_modules.<i>.<...>`, plus the `sigmas` buffer) load
/// strictly (see [`crate::checkpoint::StrictWeights`]).
///
/// Forward pass for `x: [B, C, H, W]` and `labels: [B]`:
/// $t_{emb} = \mathrm{Dense_1}(\mathrm{act}(\mathrm{Dense_0}(e(\text{labels}))))$ with the
/// sinusoidal embedding $e$ of width `nf` (`get_timestep_embedding`, the raw label: $999\,t$
/// for continuous VP, the step index for DDPM, the noise index for SMLD); a 3×3 input conv; per
/// level `num_res_blocks` residual blocks (+ attention at `attn_resolutions`) and a
/// downsample; a middle ResBlock–Attn–ResBlock; per level on the way up `num_res_blocks + 1`
/// residual blocks over the concatenated skip connections (+ attention) and an upsample; then
/// GroupNorm, act and a 3×3 output conv initialised at scale 0.
///
/// Differences from the PyTorch reference, deliberately:
/// * `conditional = false` works (the reference raises `NameError`); `Dense_0` is still built
///   in each block for `state_dict` parity, but unused.
/// * With `scale_by_sigma` the reference returns `float64` (it indexes a float64 buffer);
///   here the output keeps `x`'s dtype, the division being done with the f64 sigmas cast to it.
///   Labels must be integer indices in `[0, num_scales)` (the reference requires `long` too).
#[derive(Debug)]
pub struct Ddpm {
    config: DdpmConfig,
    modules: Vec<Block>,
    sigmas: Vec<f64>,
    dropout_seed: u64,
    dropout_calls: AtomicU64,
}

impl Ddpm {
    /// Builds (from a `VarMap`, e.g. [`crate::init::seeded_var_builder`]) or loads the network
    /// under `vb`. When `vb` holds a `sigmas` tensor it must equal the config's (relative
    /// error ≤ 1e-6), else [`Error::WeightMismatch`].
    pub fn new(config: &DdpmConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let c = config;
        let nf = c.nf;
        let temb_dim = 4 * nf;
        let all_res: Vec<usize> = (0..c.ch_mult.len()).map(|i| c.image_size >> i).collect();
        let mut modules: Vec<Block> = Vec::new();
        let vbm = vb.pp("all_modules");
        let next = |m: &Vec<Block>| vbm.pp(m.len());
        if c.conditional {
            modules.push(Block::Dense(dense(nf, temb_dim, next(&modules))?));
            modules.push(Block::Dense(dense(temb_dim, temb_dim, next(&modules))?));
        }
        modules.push(Block::Conv(Conv2d::conv3x3(
            c.num_channels,
            nf,
            1.0,
            next(&modules),
        )?));
        let mut hs_c = vec![nf];
        let mut in_ch = nf;
        let n_levels = c.ch_mult.len();
        for (level, (&mult, &res)) in c.ch_mult.iter().zip(&all_res).enumerate() {
            for _ in 0..c.num_res_blocks {
                let out_ch = nf * mult;
                let b = ResnetBlock::new(in_ch, out_ch, temb_dim, next(&modules))?;
                modules.push(Block::Res(b));
                in_ch = out_ch;
                if c.attn_resolutions.contains(&res) {
                    modules.push(Block::Attn(AttnBlock::new(in_ch, next(&modules))?));
                }
                hs_c.push(in_ch);
            }
            if level != n_levels - 1 {
                let d = Downsample::new(in_ch, c.resamp_with_conv, next(&modules))?;
                modules.push(Block::Down(d));
                hs_c.push(in_ch);
            }
        }
        modules.push(Block::Res(ResnetBlock::new(
            in_ch,
            in_ch,
            temb_dim,
            next(&modules),
        )?));
        modules.push(Block::Attn(AttnBlock::new(in_ch, next(&modules))?));
        modules.push(Block::Res(ResnetBlock::new(
            in_ch,
            in_ch,
            temb_dim,
            next(&modules),
        )?));
        for level in (0..n_levels).rev() {
            for _ in 0..=c.num_res_blocks {
                let out_ch = nf * c.ch_mult[level];
                let skip = hs_c
                    .pop()
                    .ok_or_else(|| Error::Config("internal: skip connections exhausted".into()))?;
                let b = ResnetBlock::new(in_ch + skip, out_ch, temb_dim, next(&modules))?;
                modules.push(Block::Res(b));
                in_ch = out_ch;
            }
            if c.attn_resolutions.contains(&all_res[level]) {
                modules.push(Block::Attn(AttnBlock::new(in_ch, next(&modules))?));
            }
            if level != 0 {
                let u = Upsample::new(in_ch, c.resamp_with_conv, next(&modules))?;
                modules.push(Block::Up(u));
            }
        }
        if !hs_c.is_empty() {
            return Err(Error::Config("internal: unused skip connections".into()));
        }
        modules.push(Block::Norm(group_norm32(in_ch, next(&modules))?));
        modules.push(Block::Conv(Conv2d::conv3x3(
            in_ch,
            c.num_channels,
            0.0,
            next(&modules),
        )?));

        let sigmas = c.sigmas();
        if vb.contains_tensor("sigmas") {
            let stored = vb
                .get_unchecked_dtype("sigmas", DType::F64)?
                .flatten_all()?
                .to_vec1::<f64>()?;
            let ok = stored.len() == sigmas.len()
                && stored
                    .iter()
                    .zip(&sigmas)
                    .all(|(a, b)| (a - b).abs() <= 1e-6 * b.abs());
            if !ok {
                return Err(Error::WeightMismatch(format!(
                    "the `sigmas` buffer ({} values) does not match sigma_min = {}, \
                     sigma_max = {}, num_scales = {}",
                    stored.len(),
                    c.sigma_min,
                    c.sigma_max,
                    c.num_scales
                )));
            }
        }
        Ok(Self {
            config: c.clone(),
            modules,
            sigmas,
            dropout_seed: 0,
            dropout_calls: AtomicU64::new(0),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DdpmConfig {
        &self.config
    }

    /// Number of entries of `all_modules`.
    pub fn num_modules(&self) -> usize {
        self.modules.len()
    }

    /// The float64 `sigmas` buffer (descending from `sigma_max`).
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// Seeds the dropout masks drawn by `forward_t(.., train = true)` and resets its call
    /// counter (mask `n` is drawn from a generator seeded by `(seed, n)`).
    pub fn set_dropout_seed(&mut self, seed: u64) {
        self.dropout_seed = seed;
        self.dropout_calls.store(0, Ordering::Relaxed);
    }

    /// Evaluation-mode forward pass (`model(x, labels)` in `eval()` mode).
    pub fn forward(&self, x: &Tensor, labels: &Tensor) -> Result<Tensor> {
        self.forward_impl(x, labels, None, None)
    }

    /// Training-mode forward pass, dropout masks drawn from `rng`.
    pub fn forward_train(
        &self,
        x: &Tensor,
        labels: &Tensor,
        rng: &mut dyn rand::RngCore,
    ) -> Result<Tensor> {
        self.forward_impl(x, labels, Some(rng), None)
    }

    /// Evaluation-mode forward pass that also returns every module's output in call order,
    /// named `all_modules.<i>` (the `act.NNN.*` tensors of the parity vectors).
    pub fn forward_with_activations(
        &self,
        x: &Tensor,
        labels: &Tensor,
    ) -> Result<(Tensor, Vec<(String, Tensor)>)> {
        let mut acts = Vec::new();
        let out = self.forward_impl(x, labels, None, Some(&mut acts))?;
        Ok((out, acts))
    }

    fn check_inputs(&self, x: &Tensor, labels: &Tensor) -> Result<()> {
        let c = &self.config;
        let b = x.dims().first().copied().unwrap_or(0);
        if x.dims() != [b, c.num_channels, c.image_size, c.image_size] {
            return Err(Error::Input(format!(
                "DDPM expects x of shape [B, {}, {}, {}], got {:?}",
                c.num_channels,
                c.image_size,
                c.image_size,
                x.dims()
            )));
        }
        if !x.dtype().is_float() {
            return Err(Error::Input(format!(
                "x must be a float tensor, got {:?}",
                x.dtype()
            )));
        }
        if labels.dims() != [b] {
            return Err(Error::Input(format!(
                "labels must have shape [{b}], got {:?}",
                labels.dims()
            )));
        }
        Ok(())
    }

    /// `sigmas[labels]` as a `[B, 1, 1, 1]` tensor of `dtype`; labels must be integer indices.
    fn used_sigmas(&self, labels: &Tensor, dtype: DType) -> Result<Tensor> {
        if labels.dtype().is_float() {
            return Err(Error::Input(
                "scale_by_sigma indexes the sigmas buffer: labels must be integer noise-level \
                 indices (the discrete SMLD convention), got float labels"
                    .into(),
            ));
        }
        let idx = labels.to_dtype(DType::I64)?.to_vec1::<i64>()?;
        let n = self.sigmas.len();
        let vals = idx
            .iter()
            .map(|&i| {
                usize::try_from(i)
                    .ok()
                    .and_then(|u| self.sigmas.get(u).copied())
                    .ok_or_else(|| {
                        Error::Input(format!("label {i} is outside the sigmas table [0, {n})"))
                    })
            })
            .collect::<Result<Vec<f64>>>()?;
        let b = vals.len();
        Ok(Tensor::from_vec(vals, (b, 1, 1, 1), labels.device())?.to_dtype(dtype)?)
    }

    fn forward_impl(
        &self,
        x: &Tensor,
        labels: &Tensor,
        mut rng: Rng<'_>,
        mut record: Option<&mut Vec<(String, Tensor)>>,
    ) -> Result<Tensor> {
        self.check_inputs(x, labels)?;
        let c = &self.config;
        let act = c.act;
        let dtype = x.dtype();
        let mut m = 0usize;
        let mut rec = |i: usize, t: &Tensor| {
            if let Some(r) = record.as_deref_mut() {
                r.push((format!("all_modules.{i}"), t.clone()));
            }
        };
        let module = |i: usize| {
            self.modules
                .get(i)
                .ok_or_else(|| Error::Config(format!("internal: module {i} missing")))
        };
        let internal =
            |i: usize, what: &str| Error::Config(format!("internal: module {i} is not {what}"));
        let used_sigmas = if c.scale_by_sigma {
            Some(self.used_sigmas(labels, dtype)?)
        } else {
            None
        };

        let temb = if c.conditional {
            let mut t = get_timestep_embedding(labels, c.nf)?.to_dtype(dtype)?;
            for k in 0..2 {
                let Block::Dense(d) = module(m)? else {
                    return Err(internal(m, "a Dense layer"));
                };
                let inp = if k == 0 { t } else { act.apply(&t)? };
                t = d.forward(&inp)?;
                rec(m, &t);
                m += 1;
            }
            Some(t)
        } else {
            None
        };
        let temb = temb.as_ref();
        let p = c.dropout;

        let h = if c.centered {
            x.clone()
        } else {
            x.affine(2.0, -1.0)?
        };
        let Block::Conv(conv_in) = module(m)? else {
            return Err(internal(m, "the input conv"));
        };
        let mut hs = vec![conv_in.forward(&h)?];
        rec(m, &hs[0]);
        m += 1;

        // Runs module m as a residual block on `h`.
        macro_rules! res {
            ($h:expr) => {{
                let Block::Res(b) = module(m)? else {
                    return Err(internal(m, "a residual block"));
                };
                let out = b.forward($h, temb, act, p, reborrow(&mut rng))?;
                rec(m, &out);
                m += 1;
                out
            }};
        }
        // Runs module m as an attention block when it is one.
        macro_rules! maybe_attn {
            ($h:expr) => {{
                match self.modules.get(m) {
                    Some(Block::Attn(a)) => {
                        let out = a.forward(&$h)?;
                        rec(m, &out);
                        m += 1;
                        out
                    }
                    _ => $h,
                }
            }};
        }

        let n_levels = c.ch_mult.len();
        for level in 0..n_levels {
            for _ in 0..c.num_res_blocks {
                let last = hs
                    .last()
                    .ok_or_else(|| Error::Config("internal: empty skip stack".into()))?;
                let h = res!(last);
                let h = maybe_attn!(h);
                hs.push(h);
            }
            if level != n_levels - 1 {
                let Block::Down(d) = module(m)? else {
                    return Err(internal(m, "a downsample"));
                };
                let last = hs
                    .last()
                    .ok_or_else(|| Error::Config("internal: empty skip stack".into()))?;
                let h = d.forward(last)?;
                rec(m, &h);
                m += 1;
                hs.push(h);
            }
        }
        let h = hs
            .last()
            .cloned()
            .ok_or_else(|| Error::Config("internal: empty skip stack".into()))?;
        let h = res!(&h);
        let Block::Attn(a) = module(m)? else {
            return Err(internal(m, "the middle attention"));
        };
        let h = a.forward(&h)?;
        rec(m, &h);
        m += 1;
        let mut h = res!(&h);

        for level in (0..n_levels).rev() {
            for _ in 0..=c.num_res_blocks {
                let skip = hs
                    .pop()
                    .ok_or_else(|| Error::Config("internal: empty skip stack".into()))?;
                let cat = Tensor::cat(&[&h, &skip], 1)?;
                h = res!(&cat);
            }
            h = maybe_attn!(h);
            if level != 0 {
                let Block::Up(u) = module(m)? else {
                    return Err(internal(m, "an upsample"));
                };
                h = u.forward(&h)?;
                rec(m, &h);
                m += 1;
            }
        }
        let Block::Norm(gn) = module(m)? else {
            return Err(internal(m, "the output GroupNorm"));
        };
        let hn = gn.forward(&h)?;
        rec(m, &hn);
        m += 1;
        let h = act.apply(&hn)?;
        let Block::Conv(conv_out) = module(m)? else {
            return Err(internal(m, "the output conv"));
        };
        let h = conv_out.forward(&h)?;
        rec(m, &h);
        match used_sigmas {
            Some(s) => Ok(h.broadcast_div(&s)?),
            None => Ok(h),
        }
    }
}

impl sde_core::ScoreModel for Ddpm {
    fn forward_t(&self, x: &Tensor, labels: &Tensor, train: bool) -> sde_core::Result<Tensor> {
        if train && self.config.dropout > 0.0 {
            let n = self.dropout_calls.fetch_add(1, Ordering::Relaxed);
            let mut rng = rand::rngs::StdRng::seed_from_u64(
                self.dropout_seed
                    .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                    .wrapping_add(n),
            );
            Ok(self.forward_train(x, labels, &mut rng)?)
        } else {
            Ok(self.forward(x, labels)?)
        }
    }
}
