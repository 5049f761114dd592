//! The original DDPM network (Ho et al. 2020), the reference's `models/ddpm.py`, with its own
//! blocks from `models/layers.py` (`ResnetBlockDDPM`, `AttnBlock`, `Downsample`, `Upsample`):
//! unlike NCSN++ every GroupNorm has one group count, the reference's fixed 32 by default
//! ([`DdpmConfig::num_groups`]).

mod blocks;
mod config;

pub use config::DdpmConfig;

use candle_core::{DType, Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use sde_core::noise::NoiseSource;
use sde_core::Mode;

use blocks::{group_norm, reborrow, AttnBlock, Downsample, ResnetBlock, Rng, Upsample};

use crate::error::{Error, Result};
use crate::layers::norm::GroupNorm;
use crate::layers::{dense, get_timestep_embedding, Conv2d};

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
#[derive(Debug, Clone)]
pub struct Ddpm {
    config: DdpmConfig,
    modules: Vec<Block>,
    sigmas: Vec<f64>,
    dtype: DType,
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
        let g = c.num_groups;
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
                let b = ResnetBlock::new(in_ch, out_ch, temb_dim, g, next(&modules))?;
                modules.push(Block::Res(b));
                in_ch = out_ch;
                if c.attn_resolutions.contains(&res) {
                    modules.push(Block::Attn(AttnBlock::new(in_ch, g, next(&modules))?));
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
            g,
            next(&modules),
        )?));
        modules.push(Block::Attn(AttnBlock::new(in_ch, g, next(&modules))?));
        modules.push(Block::Res(ResnetBlock::new(
            in_ch,
            in_ch,
            temb_dim,
            g,
            next(&modules),
        )?));
        for level in (0..n_levels).rev() {
            for _ in 0..=c.num_res_blocks {
                let out_ch = nf * c.ch_mult[level];
                let skip = hs_c
                    .pop()
                    .ok_or_else(|| Error::Config("internal: skip connections exhausted".into()))?;
                let b = ResnetBlock::new(in_ch + skip, out_ch, temb_dim, g, next(&modules))?;
                modules.push(Block::Res(b));
                in_ch = out_ch;
            }
            if c.attn_resolutions.contains(&all_res[level]) {
                modules.push(Block::Attn(AttnBlock::new(in_ch, g, next(&modules))?));
            }
            if level != 0 {
                let u = Upsample::new(in_ch, c.resamp_with_conv, next(&modules))?;
                modules.push(Block::Up(u));
            }
        }
        if !hs_c.is_empty() {
            return Err(Error::Config("internal: unused skip connections".into()));
        }
        modules.push(Block::Norm(group_norm(in_ch, g, next(&modules))?));
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
            dtype: vb.dtype(),
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

    /// Evaluation-mode forward pass (`model(x, labels)` in `eval()` mode).
    pub fn forward(&self, x: &Tensor, labels: &Tensor) -> Result<Tensor> {
        self.forward_impl(x, labels, None, None)
    }

    /// Training-mode forward pass, dropout masks drawn from `rng`, one per residual block in
    /// module order (`forward_t(x, labels, Mode::Train(rng))`); the network holds no generator.
    pub fn forward_train(
        &self,
        x: &Tensor,
        labels: &Tensor,
        rng: &mut dyn NoiseSource,
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
        crate::input::check_input(
            &crate::input::Expected {
                net: "DDPM",
                channels: c.num_channels,
                image_size: c.image_size,
                dtype: self.dtype,
                positive_labels: false,
            },
            x,
            labels,
        )?;
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
    fn forward_t(&self, x: &Tensor, labels: &Tensor, mode: Mode<'_>) -> sde_core::Result<Tensor> {
        match mode {
            Mode::Eval => Ok(self.forward(x, labels)?),
            Mode::Train(noise) => Ok(self.forward_train(x, labels, noise)?),
        }
    }
}
