//! Configuration of NCSN++ / DDPM++ (`config.model` and `config.data` of the reference), with
//! the paper's presets.
//!
//! Every knob of `models/ncsnpp.py` is here under its Python name; the enums replace the
//! reference's strings (and serialise to the same lowercase strings, so a JSON dump of an
//! `ml_collections` config reads back with [`NcsnPpConfig::from_reference_json`]).

use serde::{Deserialize, Serialize};

pub use crate::layers::{Activation, CombineMethod};
use crate::{Error, Result};

/// Residual block type (`model.resblock_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResblockType {
    /// `ResnetBlockDDPMpp`; resampling between levels by separate `Downsample` / `Upsample`
    /// modules (with `resamp_with_conv` and `fir`).
    Ddpm,
    /// `ResnetBlockBigGANpp`; resampling between levels by residual blocks with `down` / `up`
    /// (FIR or nearest / box resampling of both branches). All the paper's NCSN++ / DDPM++ configs.
    #[default]
    Biggan,
}

/// Output-side progressive growing (`model.progressive`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Progressive {
    /// Plain U-Net output: `GroupNorm → act → conv3x3` at the end.
    #[default]
    None,
    /// StyleGAN2 output skips: at every level an RGB image `conv3x3(act(GroupNorm(h)))` is
    /// predicted and added to the upsampled (FIR / nearest, no conv) image of the level below.
    OutputSkip,
    /// Residual pyramid: a feature pyramid upsampled with a convolution and added to `h`
    /// (divided by $\sqrt2$ with `skip_rescale`). Cannot run in the PyTorch reference (its
    /// `Upsample` with conv is broken for both `fir` settings); implemented as the JAX original.
    Residual,
}

/// Input-side progressive growing (`model.progressive_input`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProgressiveInput {
    /// No input pyramid.
    #[default]
    None,
    /// The input image is downsampled (FIR / box, no conv) at every level and merged into `h`
    /// by a [`crate::layers::Combine`] (`progressive_combine`).
    InputSkip,
    /// A feature pyramid downsampled with a convolution and added to `h`
    /// (divided by $\sqrt2$ with `skip_rescale`): the CIFAR-10 NCSN++ configs.
    Residual,
}

/// Time / noise-level embedding (`model.embedding_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmbeddingType {
    /// Gaussian Fourier features of $\log\sigma$ (continuous VE: labels are $\sigma(t)$ > 0).
    #[default]
    Fourier,
    /// Sinusoidal embedding of the raw label (VP / sub-VP $t\cdot999$, or discrete indices).
    Positional,
}

/// Every knob of NCSN++ / DDPM++ (the reference's `config.model` plus the `config.data` fields
/// the network reads). Build one from a preset and change fields, then call
/// [`NcsnPpConfig::validate`] (done by `NcsnPp::new`).
///
/// Defaults ([`Default`]) are the CIFAR-10 NCSN++ continuous (VE) config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NcsnPpConfig {
    /// Height = width of the input (`data.image_size`); must be divisible by
    /// $2^{\mathrm{len(ch\_mult)}-1}$.
    pub image_size: usize,
    /// Input / output channels (`data.num_channels`).
    pub num_channels: usize,
    /// `data.centered`: inputs are already in $[-1, 1]$. When `false` (all VE configs) the network
    /// maps its input `x → 2x − 1` before the first conv.
    pub centered: bool,
    /// Base channel count `nf`; level `i` has `nf * ch_mult[i]` channels, the time embedding has
    /// `4 nf` features.
    pub nf: usize,
    /// Channel multiplier per resolution level; its length is the number of levels.
    pub ch_mult: Vec<usize>,
    /// Residual blocks per level on the way down (the way up has one more).
    pub num_res_blocks: usize,
    /// Resolutions (feature-map widths) at which an `AttnBlockpp` follows the residual blocks.
    pub attn_resolutions: Vec<usize>,
    /// Dropout probability inside every residual block (training only).
    pub dropout: f64,
    /// Resample between levels with a convolution (`resblock_type = ddpm` only; BigGAN blocks
    /// resample inside the block).
    pub resamp_with_conv: bool,
    /// Noise-conditional network: build the time-embedding MLP and feed it to every block.
    pub conditional: bool,
    /// Use FIR filters (`fir_kernel`) for up/down-sampling instead of nearest / box filters.
    pub fir: bool,
    /// 1-D FIR kernel; the 2-D kernel is its normalised outer product (`[1, 3, 3, 1]`).
    pub fir_kernel: Vec<f64>,
    /// Divide every residual sum by $\sqrt 2$.
    pub skip_rescale: bool,
    /// Residual block type.
    pub resblock_type: ResblockType,
    /// Output-side progressive growing.
    pub progressive: Progressive,
    /// Input-side progressive growing.
    pub progressive_input: ProgressiveInput,
    /// How the `input_skip` pyramid is merged (`sum` or `cat`).
    pub progressive_combine: CombineMethod,
    /// Time embedding type.
    pub embedding_type: EmbeddingType,
    /// Standard deviation of the Fourier frequencies `W` (16 in the paper).
    pub fourier_scale: f64,
    /// `default_init` scale of the last conv of every residual block, of `NIN_3` in attention
    /// and of the output convs (0 in the paper, replaced by 1e-10 as in the reference).
    pub init_scale: f64,
    /// Divide the output by the noise level: by the label itself for `fourier`, by
    /// `sigmas[label as usize]` for `positional` (see [`crate::NcsnPp`] for the dtype policy).
    pub scale_by_sigma: bool,
    /// Convolution size (`model.conv_size`): the reference reads it but always builds 3x3
    /// convs, so only 3 is accepted.
    pub conv_size: usize,
    /// Nonlinearity (`swish` in every config of the paper).
    pub nonlinearity: Activation,
    /// Smallest noise level of the `sigmas` buffer (`model.sigma_min`).
    pub sigma_min: f64,
    /// Largest noise level of the `sigmas` buffer (`model.sigma_max`).
    pub sigma_max: f64,
    /// Length of the `sigmas` buffer (`model.num_scales`):
    /// `sigmas = exp(linspace(ln sigma_max, ln sigma_min, num_scales))`.
    pub num_scales: usize,
}

impl Default for NcsnPpConfig {
    fn default() -> Self {
        Self::cifar10_ncsnpp_continuous()
    }
}

impl NcsnPpConfig {
    /// `configs/ve/cifar10_ncsnpp_continuous.py`: NCSN++ (VE SDE), 32x32, nf 128,
    /// ch_mult (1,2,2,2), 4 blocks, attention at 16, FIR, BigGAN blocks, input pyramid
    /// `residual`, Fourier embedding, `scale_by_sigma`, non-centered input, dropout 0.1.
    pub fn cifar10_ncsnpp_continuous() -> Self {
        Self {
            image_size: 32,
            num_channels: 3,
            centered: false,
            nf: 128,
            ch_mult: vec![1, 2, 2, 2],
            num_res_blocks: 4,
            attn_resolutions: vec![16],
            dropout: 0.1,
            resamp_with_conv: true,
            conditional: true,
            fir: true,
            fir_kernel: vec![1.0, 3.0, 3.0, 1.0],
            skip_rescale: true,
            resblock_type: ResblockType::Biggan,
            progressive: Progressive::None,
            progressive_input: ProgressiveInput::Residual,
            progressive_combine: CombineMethod::Sum,
            embedding_type: EmbeddingType::Fourier,
            fourier_scale: 16.0,
            init_scale: 0.0,
            scale_by_sigma: true,
            conv_size: 3,
            nonlinearity: Activation::Swish,
            sigma_min: 0.01,
            sigma_max: 50.0,
            num_scales: 1000,
        }
    }

    /// `configs/ve/cifar10_ncsnpp_deep_continuous.py`: as [`Self::cifar10_ncsnpp_continuous`]
    /// with 8 residual blocks per level (NCSN++ cont. deep).
    pub fn cifar10_ncsnpp_deep_continuous() -> Self {
        Self {
            num_res_blocks: 8,
            ..Self::cifar10_ncsnpp_continuous()
        }
    }

    /// `configs/vp/cifar10_ddpmpp_continuous.py`: DDPM++ (VP SDE): centered input, no FIR, no
    /// pyramids, positional embedding, no `scale_by_sigma`, otherwise as NCSN++.
    pub fn cifar10_ddpmpp_continuous() -> Self {
        Self {
            centered: true,
            fir: false,
            progressive_input: ProgressiveInput::None,
            embedding_type: EmbeddingType::Positional,
            scale_by_sigma: false,
            ..Self::cifar10_ncsnpp_continuous()
        }
    }

    /// `configs/vp/cifar10_ddpmpp_deep_continuous.py`: DDPM++ with 8 blocks per level.
    pub fn cifar10_ddpmpp_deep_continuous() -> Self {
        Self {
            num_res_blocks: 8,
            ..Self::cifar10_ddpmpp_continuous()
        }
    }

    /// `configs/subvp/cifar10_ddpmpp_continuous.py`: the same network as the VP DDPM++ (only the
    /// SDE differs).
    pub fn cifar10_subvp_ddpmpp_continuous() -> Self {
        Self::cifar10_ddpmpp_continuous()
    }

    /// `configs/subvp/cifar10_ddpmpp_deep_continuous.py`: the VP DDPM++ deep network.
    pub fn cifar10_subvp_ddpmpp_deep_continuous() -> Self {
        Self::cifar10_ddpmpp_deep_continuous()
    }

    /// `configs/ve/celebahq_256_ncsnpp_continuous.py`: 256x256, ch_mult (1,1,2,2,2,2,2),
    /// 2 blocks, output skips and input skips (sum), sigma_max 348, 2000 scales, no dropout.
    pub fn celebahq_256_ncsnpp_continuous() -> Self {
        Self {
            image_size: 256,
            ch_mult: vec![1, 1, 2, 2, 2, 2, 2],
            num_res_blocks: 2,
            dropout: 0.0,
            progressive: Progressive::OutputSkip,
            progressive_input: ProgressiveInput::InputSkip,
            sigma_max: 348.0,
            num_scales: 2000,
            ..Self::cifar10_ncsnpp_continuous()
        }
    }

    /// `configs/ve/ffhq_ncsnpp_continuous.py`: 1024x1024, nf 16, ch_mult
    /// (1,2,4,8,16,32,32,32), 1 block, output/input skips, sigma_max 1348, 2000 scales.
    pub fn ffhq_1024_ncsnpp_continuous() -> Self {
        Self {
            image_size: 1024,
            nf: 16,
            ch_mult: vec![1, 2, 4, 8, 16, 32, 32, 32],
            num_res_blocks: 1,
            dropout: 0.0,
            progressive: Progressive::OutputSkip,
            progressive_input: ProgressiveInput::InputSkip,
            sigma_max: 1348.0,
            num_scales: 2000,
            ..Self::cifar10_ncsnpp_continuous()
        }
    }

    /// Small NCSN++ (VE) for tests, the `net_ncsnpp_ve` parity config: 16x16, nf 16,
    /// ch_mult (1,2,2), 1 block, attention at 8, FIR, output/input skips, no dropout.
    pub fn small_ncsnpp_ve() -> Self {
        Self {
            image_size: 16,
            nf: 16,
            ch_mult: vec![1, 2, 2],
            num_res_blocks: 1,
            attn_resolutions: vec![8],
            dropout: 0.0,
            progressive: Progressive::OutputSkip,
            progressive_input: ProgressiveInput::InputSkip,
            ..Self::cifar10_ncsnpp_continuous()
        }
    }

    /// Small DDPM++ (VP) for tests, the `net_ddpmpp_vp` parity config: 16x16, nf 16,
    /// ch_mult (1,2,2), 1 block, attention at 8, no dropout.
    pub fn small_ddpmpp_vp() -> Self {
        Self {
            image_size: 16,
            nf: 16,
            ch_mult: vec![1, 2, 2],
            num_res_blocks: 1,
            attn_resolutions: vec![8],
            dropout: 0.0,
            ..Self::cifar10_ddpmpp_continuous()
        }
    }

    /// NCSN++ for the SMLD/VE reproduction on 28×28×1 MNIST on a CPU (not a paper preset; the
    /// paper trained on CIFAR-10 only): [`Self::cifar10_ncsnpp_continuous`]'s architecture (FIR,
    /// BigGAN blocks, residual input pyramid, Fourier embedding, `scale_by_sigma`, inputs in
    /// $[0, 1]$) at `nf = 16`, `ch_mult = (1, 2, 2)` (28 → 14 → 7), one residual block per level,
    /// attention at 7×7, no dropout, and $\sigma_\max = 16$: the largest Euclidean distance
    /// between two of MNIST-5k's 4,000 training digits is 15.7 (Song & Ermon 2020, technique 1).
    pub fn mnist_ncsnpp_continuous() -> Self {
        Self {
            image_size: 28,
            num_channels: 1,
            nf: 16,
            ch_mult: vec![1, 2, 2],
            num_res_blocks: 1,
            attn_resolutions: vec![7],
            dropout: 0.0,
            sigma_max: 16.0,
            ..Self::cifar10_ncsnpp_continuous()
        }
    }

    /// DDPM++ for the DDPM/VP reproduction on 28×28×1 MNIST on a CPU:
    /// [`Self::cifar10_ddpmpp_continuous`]'s architecture (centred inputs, positional embedding,
    /// BigGAN blocks, no FIR) at the size of [`Self::mnist_ncsnpp_continuous`].
    pub fn mnist_ddpmpp_continuous() -> Self {
        Self {
            image_size: 28,
            num_channels: 1,
            nf: 16,
            ch_mult: vec![1, 2, 2],
            num_res_blocks: 1,
            attn_resolutions: vec![7],
            dropout: 0.0,
            ..Self::cifar10_ddpmpp_continuous()
        }
    }

    /// Number of resolution levels (`len(ch_mult)`).
    pub fn num_resolutions(&self) -> usize {
        self.ch_mult.len()
    }

    /// Feature-map width at each level: `image_size / 2^i`.
    pub fn all_resolutions(&self) -> Vec<usize> {
        (0..self.num_resolutions())
            .map(|i| self.image_size >> i)
            .collect()
    }

    /// The `sigmas` buffer, float64 as in PyTorch:
    /// `exp(linspace(ln sigma_max, ln sigma_min, num_scales))` (descending).
    pub fn sigmas(&self) -> Vec<f64> {
        let (a, b) = (self.sigma_max.ln(), self.sigma_min.ln());
        let n = self.num_scales;
        (0..n)
            .map(|i| {
                if n == 1 {
                    a.exp()
                } else {
                    // numpy's linspace: start + i * step, with the last point exactly `stop`
                    let v = if i == n - 1 {
                        b
                    } else {
                        a + i as f64 * ((b - a) / (n - 1) as f64)
                    };
                    v.exp()
                }
            })
            .collect()
    }

    /// Checks every knob and every combination; an invalid one is an [`Error::Config`] that says
    /// what is wrong.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.nf == 0 || self.num_channels == 0 {
            return bad(format!(
                "nf ({}) and num_channels ({}) must be positive",
                self.nf, self.num_channels
            ));
        }
        if self.ch_mult.is_empty() || self.ch_mult.contains(&0) {
            return bad(format!(
                "ch_mult must be non-empty with positive entries, got {:?}",
                self.ch_mult
            ));
        }
        let levels = self.ch_mult.len();
        if levels > 16
            || self.image_size == 0
            || !self.image_size.is_multiple_of(1usize << (levels - 1))
        {
            return bad(format!(
                "image_size {} must be divisible by 2^(len(ch_mult) - 1) = 2^{}",
                self.image_size,
                levels - 1
            ));
        }
        let res = self.all_resolutions();
        if let Some(r) = self.attn_resolutions.iter().find(|r| !res.contains(r)) {
            return bad(format!(
                "attn_resolutions contains {r}, which is no level of the resolution ladder \
                 {res:?} (image_size / 2^i): the network would have no attention there"
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        if self.conv_size != 3 {
            return bad(format!(
                "conv_size {} is not supported: the reference always builds 3x3 convolutions",
                self.conv_size
            ));
        }
        if !(self.init_scale.is_finite() && self.init_scale >= 0.0) {
            return bad(format!(
                "init_scale must be finite and >= 0, got {}",
                self.init_scale
            ));
        }
        if !self.fourier_scale.is_finite() {
            return bad(format!(
                "fourier_scale must be finite, got {}",
                self.fourier_scale
            ));
        }
        let uses_fir = self.fir;
        if uses_fir {
            crate::layers::fir::normalized_kernel(&self.fir_kernel)?;
            if self.fir_kernel.len() < 2 {
                return bad(format!(
                    "fir_kernel needs at least 2 taps for factor-2 resampling, got {:?}",
                    self.fir_kernel
                ));
            }
        }
        if self.embedding_type == EmbeddingType::Positional && self.nf < 4 {
            return bad(format!(
                "positional embedding needs nf >= 4, got {}",
                self.nf
            ));
        }
        if self.scale_by_sigma && self.embedding_type == EmbeddingType::Positional {
            if !(self.sigma_min > 0.0
                && self.sigma_max > self.sigma_min
                && self.sigma_max.is_finite())
            {
                return bad(format!(
                    "scale_by_sigma needs 0 < sigma_min < sigma_max, got {} and {}",
                    self.sigma_min, self.sigma_max
                ));
            }
            if self.num_scales == 0 {
                return bad("scale_by_sigma needs num_scales >= 1".into());
            }
        }
        // GroupNorm(min(C/4, 32)) must divide every channel count the network normalises.
        for c in self.group_norm_channels() {
            let g = (c / 4).min(32);
            if g == 0 || !c.is_multiple_of(g) {
                return bad(format!(
                    "a GroupNorm over {c} channels: min(C/4, 32) groups must divide C (adjust nf / ch_mult)"
                ));
            }
        }
        Ok(())
    }

    /// Every channel count that a GroupNorm sees (block inputs and outputs).
    fn group_norm_channels(&self) -> Vec<usize> {
        let nf = self.nf;
        let mut out = vec![];
        let mut hs_c = vec![nf];
        let mut in_ch = nf;
        let levels = self.ch_mult.len();
        for (i, m) in self.ch_mult.iter().enumerate() {
            for _ in 0..self.num_res_blocks {
                out.push(in_ch);
                in_ch = nf * m;
                out.push(in_ch);
                hs_c.push(in_ch);
            }
            if i + 1 != levels {
                out.push(in_ch);
                if self.progressive_input == ProgressiveInput::InputSkip
                    && self.progressive_combine == CombineMethod::Cat
                {
                    in_ch *= 2;
                }
                hs_c.push(in_ch);
            }
        }
        out.push(in_ch);
        for (i, m) in self.ch_mult.iter().enumerate().rev() {
            for _ in 0..=self.num_res_blocks {
                let skip = hs_c.pop().unwrap_or(0);
                out.push(in_ch + skip);
                in_ch = nf * m;
                out.push(in_ch);
            }
            if i != 0 {
                out.push(in_ch);
            }
        }
        out
    }

    /// Reads the NCSN++ / DDPM++ network of a reference config dump (the config, or a file
    /// with it under `config`; see [`crate::ReferenceConfig::from_json`]), then validates.
    ///
    /// Every key `models/ncsnpp.py` reads must be present (`data.image_size`, `num_channels`,
    /// `centered`; `model.nf`, `ch_mult`, `num_res_blocks`, `attn_resolutions`, `dropout`,
    /// `resamp_with_conv`, `conditional`, `fir`, `fir_kernel`, `skip_rescale`,
    /// `resblock_type`, `progressive`, `progressive_input`, `progressive_combine`,
    /// `embedding_type`, `init_scale`, `scale_by_sigma`, `nonlinearity`, `sigma_min`,
    /// `sigma_max`, `num_scales`, and `fourier_scale` for the Fourier embedding); `conv_size`
    /// defaults to 3. A key outside the reference's schema, a missing key, a wrong type, or
    /// `model.name` other than `ncsnpp` is [`Error::Config`] naming the key.
    pub fn from_reference_json(config: &serde_json::Value) -> Result<Self> {
        Self::from_reference(&crate::ReferenceConfig::from_json(config)?)
    }

    pub(crate) fn from_reference(r: &crate::ReferenceConfig) -> Result<Self> {
        let (data, m) = (r.section("data"), r.section("model"));
        const WHO: &str = "ncsnpp";
        if let Some(name) = m.str("name")? {
            if name != "ncsnpp" {
                return Err(Error::Config(format!(
                    "reference config: `config.model.name` = `{name}` is not NCSN++ / DDPM++ (`ncsnpp`)"
                )));
            }
        }
        if let Some(norm) = m.str("normalization")? {
            if norm != "GroupNorm" {
                return Err(Error::Config(format!(
                    "reference config: `config.model.normalization` = `{norm}` is not supported \
                     (NCSN++ uses GroupNorm)"
                )));
            }
        }
        use crate::reference::Section as S;
        let embedding_type = m.req("embedding_type", WHO, S::enum_of)?;
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
            fir: m.req("fir", WHO, S::bool)?,
            fir_kernel: m.req("fir_kernel", WHO, S::f64s)?,
            skip_rescale: m.req("skip_rescale", WHO, S::bool)?,
            resblock_type: m.req("resblock_type", WHO, S::enum_of)?,
            progressive: m.req("progressive", WHO, S::enum_of)?,
            progressive_input: m.req("progressive_input", WHO, S::enum_of)?,
            progressive_combine: m.req("progressive_combine", WHO, S::enum_of)?,
            embedding_type,
            fourier_scale: match embedding_type {
                EmbeddingType::Fourier => m.req("fourier_scale", WHO, S::f64)?,
                EmbeddingType::Positional => m.f64("fourier_scale")?.unwrap_or(16.0),
            },
            init_scale: m.req("init_scale", WHO, S::f64)?,
            scale_by_sigma: m.req("scale_by_sigma", WHO, S::bool)?,
            conv_size: m.usize("conv_size")?.unwrap_or(3),
            nonlinearity: m.req("nonlinearity", WHO, S::enum_of)?,
            sigma_min: m.req("sigma_min", WHO, S::f64)?,
            sigma_max: m.req("sigma_max", WHO, S::f64)?,
            num_scales: m.req("num_scales", WHO, S::usize)?,
        };
        c.validate()?;
        Ok(c)
    }
}
