//! NCSN++ / DDPM++ (`models/ncsnpp.py`, Song et al. 2021, Sec. 4.4 and App. H).

use candle_core::{DType, Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use sde_core::noise::NoiseSource;
use sde_core::Mode;

use crate::config::{EmbeddingType, NcsnPpConfig, Progressive, ProgressiveInput, ResblockType};
use crate::layers::{
    dense, get_timestep_embedding, group_norm, AttnBlockPp, Combine, Conv2d, Downsample,
    GaussianFourierProjection, GroupNorm, Resample, ResnetBlockBigGanPp, ResnetBlockDdpmPp,
    ResnetOptions, Upsample,
};
use crate::{Error, Result};

#[derive(Debug, Clone)]
enum ResBlock {
    Ddpm(ResnetBlockDdpmPp),
    BigGan(ResnetBlockBigGanPp),
}

#[derive(Debug, Clone)]
enum Block {
    Fourier(GaussianFourierProjection),
    Dense(Linear),
    Conv(Conv2d),
    Res(ResBlock),
    Attn(AttnBlockPp),
    Down(Downsample),
    Up(Upsample),
    Combine(Combine),
    Norm(GroupNorm),
}

type Record<'a> = Option<&'a mut Vec<(String, Tensor)>>;
type Rng<'a> = Option<&'a mut dyn NoiseSource>;

fn reborrow<'a>(r: &'a mut Rng<'_>) -> Option<&'a mut dyn NoiseSource> {
    match r {
        Some(r) => Some(&mut **r),
        None => None,
    }
}

/// NCSN++ and DDPM++ (the reference's `ncsnpp` model): a U-Net of BigGAN / DDPM residual blocks
/// with self-attention, optional FIR resampling and progressive input / output pyramids,
/// conditioned on the noise level through a Fourier or sinusoidal embedding.
///
/// `forward(x, labels)`: `x: [B, num_channels, image_size, image_size]`, `labels: [B]`
/// (`σ(t)` for the Fourier embedding; `t·999` or integer indices for the positional one), returns
/// a tensor shaped like `x` (the score for VE, `-std · score` for VP / sub-VP through
/// [`sde_core::ScoreModelFn`]).
///
/// Parameter paths equal the PyTorch `state_dict`: `all_modules.<i>.<...>` in module order,
/// `NIN_*.W` of shape `[in, out]`, GroupNorm `min(C/4, 32)` groups with eps 1e-6. The float64
/// `sigmas` buffer is recomputed from the config; when the weights contain a `sigmas` tensor it
/// is read and checked against the config.
///
/// **dtype policy for `scale_by_sigma` with the positional embedding.** The reference divides by
/// `sigmas[labels.long()]` taken from a float64 buffer, so it returns float64. Here the sigmas are
/// computed and gathered in f64 on the host, cast to the network's dtype, and the output keeps the
/// input dtype (f32 for f32 inputs): the extra rounding is ~6e-8 relative. Labels are truncated
/// toward zero as `.long()` does and must lie in `[0, num_scales)`.
///
/// **Dropout.** [`Mode::Eval`] never drops. [`Mode::Train`] (and [`NcsnPp::forward_train`])
/// draws one uniform mask per residual block, in module order, from the caller's
/// [`NoiseSource`]; the network holds no generator of its own, so a training step is a function
/// of the weights, the inputs and the caller's source. With `dropout = 0` nothing is drawn.
///
/// Where this differs from the PyTorch reference (paths that raise there):
/// `progressive = residual`, the non-FIR `Upsample` (nearest + conv) and the fused FIR
/// up-convolution are implemented as the JAX original intends.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use score_nets::{init::seeded_var_builder, NcsnPp, NcsnPpConfig};
/// let cfg = NcsnPpConfig { nf: 8, ..NcsnPpConfig::small_ncsnpp_ve() };
/// let vm = candle_nn::VarMap::new();
/// let net = NcsnPp::new(cfg, seeded_var_builder(&vm, 0, DType::F32, &Device::Cpu))?;
/// let x = Tensor::zeros((2, 3, 16, 16), DType::F32, &Device::Cpu)?;
/// let sigma = Tensor::new(&[0.5f32, 10.0], &Device::Cpu)?;
/// let y = net.forward(&x, &sigma)?;
/// assert_eq!(y.dims(), &[2, 3, 16, 16]);
/// # Ok::<(), score_nets::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct NcsnPp {
    config: NcsnPpConfig,
    modules: Vec<Block>,
    pyramid_upsample: Option<Upsample>,
    pyramid_downsample: Option<Downsample>,
    sigmas: Vec<f64>,
    dtype: DType,
}

/// DDPM++ is NCSN++ with its own settings (positional embedding, no FIR, no pyramids, centered
/// input); see [`NcsnPpConfig::cifar10_ddpmpp_continuous`] and [`ddpmpp`].
pub type DdpmPp = NcsnPp;

/// Builds DDPM++ (`configs/vp/cifar10_ddpmpp_continuous.py`) with the given image size.
pub fn ddpmpp(image_size: usize, vb: VarBuilder) -> Result<DdpmPp> {
    NcsnPp::new(
        NcsnPpConfig {
            image_size,
            ..NcsnPpConfig::cifar10_ddpmpp_continuous()
        },
        vb,
    )
}

impl NcsnPp {
    /// Builds the network, creating or loading every parameter under `vb` (use
    /// [`crate::init::seeded_var_builder`] for a reproducible from-scratch init, or
    /// `VarBuilder::from_tensors` / a checkpoint loader for trained weights).
    // The loops mirror `models/ncsnpp.py` index for index.
    #[allow(clippy::needless_range_loop)]
    pub fn new(config: NcsnPpConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let c = &config;
        let nf = c.nf;
        let kernel = c.fir_kernel.clone();
        let fir_k: Option<&[f64]> = if c.fir { Some(&kernel) } else { None };
        let vbm = vb.pp("all_modules");
        let mut modules: Vec<Block> = vec![];
        let next = |m: &Vec<Block>| vbm.pp(m.len().to_string());

        let embed_dim = match c.embedding_type {
            EmbeddingType::Fourier => {
                let f = GaussianFourierProjection::new(nf, c.fourier_scale, next(&modules))?;
                modules.push(Block::Fourier(f));
                2 * nf
            }
            EmbeddingType::Positional => nf,
        };
        if c.conditional {
            let d = dense(embed_dim, 4 * nf, next(&modules))?;
            modules.push(Block::Dense(d));
            let d = dense(4 * nf, 4 * nf, next(&modules))?;
            modules.push(Block::Dense(d));
        }
        let opts = ResnetOptions {
            act: c.nonlinearity,
            dropout: c.dropout,
            skip_rescale: c.skip_rescale,
            init_scale: c.init_scale,
            temb_dim: if c.conditional { Some(4 * nf) } else { None },
        };
        let resblock = |vb: VarBuilder, in_ch: usize, out_ch: Option<usize>, rs: Resample| {
            Ok::<_, Error>(Block::Res(match c.resblock_type {
                ResblockType::Ddpm => ResBlock::Ddpm(ResnetBlockDdpmPp::new(
                    in_ch,
                    out_ch,
                    false,
                    opts.clone(),
                    vb,
                )?),
                ResblockType::Biggan => ResBlock::BigGan(ResnetBlockBigGanPp::new(
                    in_ch,
                    out_ch,
                    rs,
                    fir_k,
                    opts.clone(),
                    vb,
                )?),
            }))
        };
        let attn = |vb: VarBuilder, ch: usize| {
            Ok::<_, Error>(Block::Attn(AttnBlockPp::new(
                ch,
                c.skip_rescale,
                c.init_scale,
                vb,
            )?))
        };

        let pyramid_upsample = match c.progressive {
            Progressive::OutputSkip => Some(Upsample::new(
                c.num_channels,
                None,
                false,
                c.fir,
                &kernel,
                vb.pp("pyramid_upsample"),
            )?),
            _ => None,
        };
        let pyramid_downsample = match c.progressive_input {
            ProgressiveInput::InputSkip => Some(Downsample::new(
                c.num_channels,
                None,
                false,
                c.fir,
                &kernel,
                vb.pp("pyramid_downsample"),
            )?),
            _ => None,
        };

        let channels = c.num_channels;
        let mut input_pyramid_ch = channels;
        let conv = Conv2d::conv3x3(channels, nf, 1.0, next(&modules))?;
        modules.push(Block::Conv(conv));
        let mut hs_c = vec![nf];
        let mut in_ch = nf;
        let res = c.all_resolutions();
        let levels = c.num_resolutions();
        for i_level in 0..levels {
            for _ in 0..c.num_res_blocks {
                let out_ch = nf * c.ch_mult[i_level];
                let b = resblock(next(&modules), in_ch, Some(out_ch), Resample::None)?;
                modules.push(b);
                in_ch = out_ch;
                if c.attn_resolutions.contains(&res[i_level]) {
                    let b = attn(next(&modules), in_ch)?;
                    modules.push(b);
                }
                hs_c.push(in_ch);
            }
            if i_level != levels - 1 {
                let b = match c.resblock_type {
                    ResblockType::Ddpm => Block::Down(Downsample::new(
                        in_ch,
                        None,
                        c.resamp_with_conv,
                        c.fir,
                        &kernel,
                        next(&modules),
                    )?),
                    ResblockType::Biggan => resblock(next(&modules), in_ch, None, Resample::Down)?,
                };
                modules.push(b);
                match c.progressive_input {
                    ProgressiveInput::InputSkip => {
                        let b = Combine::new(
                            input_pyramid_ch,
                            in_ch,
                            c.progressive_combine,
                            next(&modules),
                        )?;
                        modules.push(Block::Combine(b));
                        if c.progressive_combine == crate::layers::CombineMethod::Cat {
                            in_ch *= 2;
                        }
                    }
                    ProgressiveInput::Residual => {
                        let b = Downsample::new(
                            input_pyramid_ch,
                            Some(in_ch),
                            true,
                            c.fir,
                            &kernel,
                            next(&modules),
                        )?;
                        modules.push(Block::Down(b));
                        input_pyramid_ch = in_ch;
                    }
                    ProgressiveInput::None => {}
                }
                hs_c.push(in_ch);
            }
        }

        in_ch = *hs_c.last().unwrap_or(&nf);
        let b = resblock(next(&modules), in_ch, None, Resample::None)?;
        modules.push(b);
        let b = attn(next(&modules), in_ch)?;
        modules.push(b);
        let b = resblock(next(&modules), in_ch, None, Resample::None)?;
        modules.push(b);

        let mut pyramid_ch = 0;
        for i_level in (0..levels).rev() {
            for _ in 0..=c.num_res_blocks {
                let out_ch = nf * c.ch_mult[i_level];
                let skip = hs_c
                    .pop()
                    .ok_or_else(|| Error::Config("internal: skip-connection stack empty".into()))?;
                let b = resblock(next(&modules), in_ch + skip, Some(out_ch), Resample::None)?;
                modules.push(b);
                in_ch = out_ch;
            }
            if c.attn_resolutions.contains(&res[i_level]) {
                let b = attn(next(&modules), in_ch)?;
                modules.push(b);
            }
            if c.progressive != Progressive::None {
                if i_level == levels - 1 {
                    let gn = group_norm(in_ch, next(&modules))?;
                    modules.push(Block::Norm(gn));
                    match c.progressive {
                        Progressive::OutputSkip => {
                            let cv =
                                Conv2d::conv3x3(in_ch, channels, c.init_scale, next(&modules))?;
                            modules.push(Block::Conv(cv));
                            pyramid_ch = channels;
                        }
                        _ => {
                            let cv = Conv2d::conv3x3(in_ch, in_ch, 1.0, next(&modules))?;
                            modules.push(Block::Conv(cv));
                            pyramid_ch = in_ch;
                        }
                    }
                } else {
                    match c.progressive {
                        Progressive::OutputSkip => {
                            let gn = group_norm(in_ch, next(&modules))?;
                            modules.push(Block::Norm(gn));
                            let cv =
                                Conv2d::conv3x3(in_ch, channels, c.init_scale, next(&modules))?;
                            modules.push(Block::Conv(cv));
                            pyramid_ch = channels;
                        }
                        _ => {
                            let up = Upsample::new(
                                pyramid_ch,
                                Some(in_ch),
                                true,
                                c.fir,
                                &kernel,
                                next(&modules),
                            )?;
                            modules.push(Block::Up(up));
                            pyramid_ch = in_ch;
                        }
                    }
                }
            }
            if i_level != 0 {
                let b = match c.resblock_type {
                    ResblockType::Ddpm => Block::Up(Upsample::new(
                        in_ch,
                        None,
                        c.resamp_with_conv,
                        c.fir,
                        &kernel,
                        next(&modules),
                    )?),
                    ResblockType::Biggan => resblock(next(&modules), in_ch, None, Resample::Up)?,
                };
                modules.push(b);
            }
        }
        if !hs_c.is_empty() {
            return Err(Error::Config("internal: unused skip connections".into()));
        }
        if c.progressive != Progressive::OutputSkip {
            let gn = group_norm(in_ch, next(&modules))?;
            modules.push(Block::Norm(gn));
            let cv = Conv2d::conv3x3(in_ch, channels, c.init_scale, next(&modules))?;
            modules.push(Block::Conv(cv));
        }

        let sigmas = config.sigmas();
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
                    "the `sigmas` buffer ({} values) does not match sigma_min = {}, sigma_max = {}, num_scales = {}",
                    stored.len(),
                    config.sigma_min,
                    config.sigma_max,
                    config.num_scales
                )));
            }
        }
        Ok(Self {
            config,
            modules,
            pyramid_upsample,
            pyramid_downsample,
            sigmas,
            dtype: vb.dtype(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &NcsnPpConfig {
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

    /// Training-mode forward pass with dropout masks drawn from `rng`
    /// (`forward_t(x, labels, Mode::Train(rng))`).
    pub fn forward_train(
        &self,
        x: &Tensor,
        labels: &Tensor,
        rng: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        self.forward_impl(x, labels, Some(rng), None)
    }

    /// Evaluation-mode forward pass that also returns the output of every module call in call
    /// order, named `all_modules.<i>`, `pyramid_upsample` or `pyramid_downsample` (the
    /// `act.NNN.<module>` tensors of the parity vectors).
    pub fn forward_with_activations(
        &self,
        x: &Tensor,
        labels: &Tensor,
    ) -> Result<(Tensor, Vec<(String, Tensor)>)> {
        let mut acts = vec![];
        let out = self.forward_impl(x, labels, None, Some(&mut acts))?;
        Ok((out, acts))
    }

    fn module(&self, i: usize) -> Result<&Block> {
        self.modules
            .get(i)
            .ok_or_else(|| Error::Config(format!("internal: module {i} missing")))
    }

    fn check_inputs(&self, x: &Tensor, labels: &Tensor) -> Result<()> {
        let c = &self.config;
        crate::input::check_input(
            &crate::input::Expected {
                net: "NCSN++",
                channels: c.num_channels,
                image_size: c.image_size,
                dtype: self.dtype,
                positive_labels: c.embedding_type == EmbeddingType::Fourier,
            },
            x,
            labels,
        )?;
        Ok(())
    }

    /// `sigmas[labels.long()]` gathered on the host in f64, as a `[B, 1, 1, 1]` tensor of `dtype`.
    fn positional_sigmas(&self, labels: &Tensor, dtype: DType) -> Result<Tensor> {
        let l = labels.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let n = self.sigmas.len();
        let s = l
            .iter()
            .map(|&v| {
                let i = v.trunc();
                if !(i >= 0.0 && (i as usize) < n) {
                    return Err(Error::Input(format!(
                        "scale_by_sigma: label {v} does not index the {n} sigmas"
                    )));
                }
                Ok(self.sigmas[i as usize])
            })
            .collect::<Result<Vec<f64>>>()?;
        let b = s.len();
        Ok(Tensor::from_vec(s, (b, 1, 1, 1), labels.device())?.to_dtype(dtype)?)
    }

    #[allow(clippy::needless_range_loop)]
    fn forward_impl(
        &self,
        x: &Tensor,
        labels: &Tensor,
        mut rng: Rng<'_>,
        mut record: Record<'_>,
    ) -> Result<Tensor> {
        self.check_inputs(x, labels)?;
        let c = &self.config;
        let act = c.nonlinearity;
        let dtype = x.dtype();
        let mut rec = |name: String, t: &Tensor| {
            if let Some(r) = record.as_deref_mut() {
                r.push((name, t.clone()));
            }
        };
        let mut m = 0usize;
        let name = |i: usize| format!("all_modules.{i}");

        // embedding
        let (temb, used_sigmas) = match c.embedding_type {
            EmbeddingType::Fourier => {
                let labels = labels.to_dtype(dtype)?;
                let Block::Fourier(f) = self.module(m)? else {
                    return Err(Error::Config(
                        "internal: module 0 is not the Fourier embedding".into(),
                    ));
                };
                let t = f.forward(&labels.log()?)?;
                rec(name(m), &t);
                m += 1;
                let s = if c.scale_by_sigma {
                    Some(labels.reshape(((), 1, 1, 1))?)
                } else {
                    None
                };
                (t, s)
            }
            EmbeddingType::Positional => {
                let s = if c.scale_by_sigma {
                    Some(self.positional_sigmas(labels, dtype)?)
                } else {
                    None
                };
                (get_timestep_embedding(labels, c.nf)?.to_dtype(dtype)?, s)
            }
        };
        let temb = if c.conditional {
            let mut t = temb;
            for k in 0..2 {
                let Block::Dense(d) = self.module(m)? else {
                    return Err(Error::Config(
                        "internal: time-embedding MLP expected".into(),
                    ));
                };
                let inp = if k == 0 { t } else { act.apply(&t)? };
                t = d.forward(&inp)?;
                rec(name(m), &t);
                m += 1;
            }
            Some(t)
        } else {
            None
        };
        let temb = temb.as_ref();

        let x = if c.centered {
            x.clone()
        } else {
            x.affine(2.0, -1.0)?
        };

        let mut input_pyramid = match c.progressive_input {
            ProgressiveInput::None => None,
            _ => Some(x.clone()),
        };

        let run = |m: usize, h: &Tensor, rng: Option<&mut dyn NoiseSource>| -> Result<Tensor> {
            match self.module(m)? {
                Block::Res(ResBlock::Ddpm(b)) => b.forward(h, temb, rng),
                Block::Res(ResBlock::BigGan(b)) => b.forward(h, temb, rng),
                Block::Attn(a) => a.forward(h),
                Block::Down(d) => d.forward(h),
                Block::Up(u) => u.forward(h),
                Block::Conv(cv) => cv.forward(h),
                Block::Norm(g) => Ok(g.forward(h)?),
                Block::Fourier(_) | Block::Dense(_) | Block::Combine(_) => Err(Error::Config(
                    format!("internal: unexpected module kind at {m}"),
                )),
            }
        };

        let h0 = run(m, &x, None)?;
        rec(name(m), &h0);
        m += 1;
        let mut hs = vec![h0];
        let res = c.all_resolutions();
        let levels = c.num_resolutions();
        let last = |hs: &Vec<Tensor>| {
            hs.last()
                .cloned()
                .ok_or_else(|| Error::Config("internal: empty skip stack".into()))
        };
        for i_level in 0..levels {
            for _ in 0..c.num_res_blocks {
                let mut h = run(m, &last(&hs)?, reborrow(&mut rng))?;
                rec(name(m), &h);
                m += 1;
                if c.attn_resolutions.contains(&res[i_level]) {
                    h = run(m, &h, None)?;
                    rec(name(m), &h);
                    m += 1;
                }
                hs.push(h);
            }
            if i_level != levels - 1 {
                let mut h = run(m, &last(&hs)?, reborrow(&mut rng))?;
                rec(name(m), &h);
                m += 1;
                match c.progressive_input {
                    ProgressiveInput::InputSkip => {
                        let (Some(pd), Some(ip)) = (&self.pyramid_downsample, &input_pyramid)
                        else {
                            return Err(Error::Config("internal: input pyramid missing".into()));
                        };
                        let ip = pd.forward(ip)?;
                        rec("pyramid_downsample".into(), &ip);
                        let Block::Combine(cb) = self.module(m)? else {
                            return Err(Error::Config("internal: Combine expected".into()));
                        };
                        h = cb.forward(&ip, &h)?;
                        rec(name(m), &h);
                        m += 1;
                        input_pyramid = Some(ip);
                    }
                    ProgressiveInput::Residual => {
                        let Some(ip) = &input_pyramid else {
                            return Err(Error::Config("internal: input pyramid missing".into()));
                        };
                        let ip = run(m, ip, None)?;
                        rec(name(m), &ip);
                        m += 1;
                        let s = (ip + &h)?;
                        let s = if c.skip_rescale {
                            (s / std::f64::consts::SQRT_2)?
                        } else {
                            s
                        };
                        h = s.clone();
                        input_pyramid = Some(s);
                    }
                    ProgressiveInput::None => {}
                }
                hs.push(h);
            }
        }

        let mut h = last(&hs)?;
        for _ in 0..3 {
            h = run(m, &h, reborrow(&mut rng))?;
            rec(name(m), &h);
            m += 1;
        }

        let mut pyramid: Option<Tensor> = None;
        for i_level in (0..levels).rev() {
            for _ in 0..=c.num_res_blocks {
                let skip = hs
                    .pop()
                    .ok_or_else(|| Error::Config("internal: skip stack exhausted".into()))?;
                h = run(m, &Tensor::cat(&[&h, &skip], 1)?, reborrow(&mut rng))?;
                rec(name(m), &h);
                m += 1;
            }
            if c.attn_resolutions.contains(&res[i_level]) {
                h = run(m, &h, None)?;
                rec(name(m), &h);
                m += 1;
            }
            if c.progressive != Progressive::None {
                if i_level == levels - 1 {
                    let g = run(m, &h, None)?;
                    rec(name(m), &g);
                    m += 1;
                    let p = run(m, &act.apply(&g)?, None)?;
                    rec(name(m), &p);
                    m += 1;
                    pyramid = Some(p);
                } else {
                    let Some(p) = pyramid.take() else {
                        return Err(Error::Config("internal: output pyramid missing".into()));
                    };
                    match c.progressive {
                        Progressive::OutputSkip => {
                            let Some(pu) = &self.pyramid_upsample else {
                                return Err(Error::Config(
                                    "internal: pyramid_upsample missing".into(),
                                ));
                            };
                            let p = pu.forward(&p)?;
                            rec("pyramid_upsample".into(), &p);
                            let g = run(m, &h, None)?;
                            rec(name(m), &g);
                            m += 1;
                            let ph = run(m, &act.apply(&g)?, None)?;
                            rec(name(m), &ph);
                            m += 1;
                            pyramid = Some((p + ph)?);
                        }
                        _ => {
                            let p = run(m, &p, None)?;
                            rec(name(m), &p);
                            m += 1;
                            let s = (p + &h)?;
                            let s = if c.skip_rescale {
                                (s / std::f64::consts::SQRT_2)?
                            } else {
                                s
                            };
                            h = s.clone();
                            pyramid = Some(s);
                        }
                    }
                }
            }
            if i_level != 0 {
                h = run(m, &h, reborrow(&mut rng))?;
                rec(name(m), &h);
                m += 1;
            }
        }
        if !hs.is_empty() {
            return Err(Error::Config("internal: skip stack not consumed".into()));
        }
        let mut h = if c.progressive == Progressive::OutputSkip {
            pyramid.ok_or_else(|| Error::Config("internal: output pyramid missing".into()))?
        } else {
            let g = run(m, &h, None)?;
            rec(name(m), &g);
            m += 1;
            let o = run(m, &act.apply(&g)?, None)?;
            rec(name(m), &o);
            m += 1;
            o
        };
        if m != self.modules.len() {
            return Err(Error::Config(format!(
                "internal: used {m} of {} modules",
                self.modules.len()
            )));
        }
        if let Some(s) = used_sigmas {
            h = h.broadcast_div(&s)?;
        }
        Ok(h)
    }
}

impl sde_core::ScoreModel for NcsnPp {
    fn forward_t(&self, x: &Tensor, labels: &Tensor, mode: Mode<'_>) -> sde_core::Result<Tensor> {
        match mode {
            Mode::Eval => Ok(self.forward(x, labels)?),
            Mode::Train(noise) => Ok(self.forward_train(x, labels, noise)?),
        }
    }
}
