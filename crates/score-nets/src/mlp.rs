//! A small time-conditioned MLP score network for low-dimensional data (our own design; the
//! reference has no such network).
//!
//! The examples and `sde-train`'s tests train it on 2-D toy data (rings of Gaussians) on a CPU
//! in minutes.

use candle_core::{DType, Tensor};
use candle_nn::{Init, Linear, Module, VarBuilder};

use sde_kernels::mlp::{MlpSpec, Save, TimeEmbedding};

use crate::error::{Error, Result};
use crate::init::default_init;
use crate::layers::{get_timestep_embedding, GaussianFourierProjection};
use crate::mlp_cpu::FusedMlp;

/// How the MLP embeds its time label (see [`MlpConfig::embedding`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MlpEmbedding {
    /// Random Fourier features of $s$ (`GaussianFourierProjection`):
    /// $e(s) = [\sin(2\pi W s),\ \cos(2\pi W s)]$ with fixed $W_k \sim \mathcal N(0, \text{scale}^2)$
    /// (`fourier_scale`, 16 in the paper's NCSN++). $s = \log(\text{label})$ when `log_label`
    /// (the VE convention, where the label is $\sigma(t) > 0$), else the raw label.
    /// `W` is stored with the weights (name `embed.W`) but never trained: the forward pass
    /// detaches it, as the reference sets `requires_grad = False`.
    Fourier {
        /// Standard deviation of the random frequencies `W` (`fourier_scale`).
        scale: f64,
        /// Embed $\log(\text{label})$ instead of the label (requires labels > 0).
        log_label: bool,
    },
    /// Transformer sinusoidal embedding of the raw label (`get_timestep_embedding`, DDPM):
    /// $e(s) = [\sin(s f_k),\ \cos(s f_k)]$, $f_k = \exp(-k \ln(10000)/(d/2 - 1))$.
    /// Suits the VP / sub-VP labels $999\,t$ and integer SMLD labels.
    Positional,
}

/// Configuration of [`Mlp`].
///
/// The network is
/// $$\begin{aligned}
/// \tau &= W_{t,1}\,\mathrm{SiLU}(W_{t,0}\, e(\text{label})),\\
/// h_0 &= W_\text{in}\,x,\qquad
/// h_{i+1} = \mathrm{SiLU}\big(W_i h_i + U_i\,\mathrm{SiLU}(\tau)\big),\quad i < n_\text{layers},\\
/// \text{out} &= W_\text{out}\, h_{n_\text{layers}}\ \big(/\ \text{label if `scale_by_sigma`}\big),
/// \end{aligned}$$
/// every $W, U$ affine. Defaults (`Default`, [`MlpConfig::ve`]): `hidden = 128`,
/// `n_layers = 3`, `embedding_dim = 64`, Fourier embedding of $\log\sigma$ with scale 16, and
/// `scale_by_sigma = true`.
#[derive(Debug, Clone, PartialEq)]
pub struct MlpConfig {
    /// Dimension $D$ of a data point (input and output are `[B, D]`).
    pub data_dim: usize,
    /// Width of every hidden layer.
    pub hidden: usize,
    /// Number of hidden layers, each conditioned on time (at least 1).
    pub n_layers: usize,
    /// The time embedding.
    pub embedding: MlpEmbedding,
    /// Dimension of the time embedding $e(\text{label})$ (even, at least 4).
    pub embedding_dim: usize,
    /// Divide the output by the label (`scale_by_sigma` of NCSN++: the label is $\sigma(t)$, so
    /// the network learns $\sigma\,\nabla\log p$, whose scale does not depend on $t$).
    /// Only meaningful for the continuous VE convention.
    pub scale_by_sigma: bool,
}

impl MlpConfig {
    /// The VE (SMLD) setting: labels are $\sigma(t)$, Fourier embedding of $\log\sigma$
    /// (scale 16), output divided by $\sigma$.
    pub fn ve(data_dim: usize) -> Self {
        Self {
            data_dim,
            hidden: 128,
            n_layers: 3,
            embedding: MlpEmbedding::Fourier {
                scale: 16.0,
                log_label: true,
            },
            embedding_dim: 64,
            scale_by_sigma: true,
        }
    }

    /// The VP / sub-VP (DDPM) setting: labels are $999\,t$, positional embedding, no output
    /// scaling (the score adapter divides by $-\mathrm{std}(t)$).
    pub fn vp(data_dim: usize) -> Self {
        Self {
            embedding: MlpEmbedding::Positional,
            scale_by_sigma: false,
            ..Self::ve(data_dim)
        }
    }

    /// Checks the configuration: positive sizes, an even embedding dimension, a finite
    /// positive Fourier scale.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::Config(format!("MlpConfig: {what}")));
        if self.data_dim == 0 {
            return bad("data_dim must be > 0");
        }
        if self.hidden == 0 {
            return bad("hidden must be > 0");
        }
        if self.n_layers == 0 {
            return bad("n_layers must be >= 1");
        }
        if self.embedding_dim < 4 || self.embedding_dim & 1 != 0 {
            return bad(&format!(
                "embedding_dim must be even and >= 4, got {}",
                self.embedding_dim
            ));
        }
        if let MlpEmbedding::Fourier { scale, .. } = self.embedding {
            if !(scale.is_finite() && scale > 0.0) {
                return bad(&format!(
                    "fourier scale must be finite and > 0, got {scale}"
                ));
            }
        }
        Ok(())
    }
}

impl Default for MlpConfig {
    /// [`MlpConfig::ve`] for 2-D data.
    fn default() -> Self {
        Self::ve(2)
    }
}

/// A time-conditioned MLP score network for data of shape `[B, D]` (see [`MlpConfig`] for the
/// equations). Implements [`sde_core::ScoreModel`].
///
/// Parameter names: `embed.W` (Fourier only, `[embedding_dim / 2]`), `temb.0`, `temb.1`,
/// `input`, `layers.{i}.linear`, `layers.{i}.temb`, `output` (each with `weight` `[out, in]`
/// and `bias` `[out]`). Weights are drawn with the reference's `default_init`
/// (variance scaling, fan-average, uniform, scale 1), biases are zero.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use score_nets::{Mlp, MlpConfig};
/// use sde_core::{ScoreFn, ScoreModelFn, VeSde};
///
/// let dev = Device::Cpu;
/// let varmap = VarMap::new(); // train these variables with any candle optimizer
/// let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
/// let mlp = Mlp::new(&MlpConfig::ve(2), vb)?;
/// let sde = VeSde::default();
/// let score = ScoreModelFn::new(&sde, &mlp, true);
/// let x = Tensor::zeros((5, 2), DType::F32, &dev)?;
/// let t = sde_core::time_tensor(0.5, 5, &dev, DType::F32)?;
/// assert_eq!(score.score(&x, &t)?.dims(), &[5, 2]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Mlp {
    config: MlpConfig,
    fourier: Option<GaussianFourierProjection>,
    temb0: Linear,
    temb1: Linear,
    input: Linear,
    layers: Vec<(Linear, Linear)>,
    output: Linear,
}

/// Which implementation a forward call uses.
#[derive(Debug, Clone, Copy)]
enum Path {
    /// The fused CPU kernel where it applies (keeping activations or not), else candle ops.
    Auto(Save),
    /// Candle ops.
    CandleOps,
}

/// An affine layer with the reference's `default_init` weight `[out, in]` and a zero bias.
fn dense(vb: VarBuilder, fan_in: usize, fan_out: usize) -> Result<Linear> {
    let shape: candle_core::Shape = (fan_out, fan_in).into();
    let w = vb.get_with_hints(shape.clone(), "weight", default_init(1.0, &shape))?;
    let b = vb.get_with_hints(fan_out, "bias", Init::Const(0.0))?;
    Ok(Linear::new(w, Some(b)))
}

impl Mlp {
    /// Builds the network, reading (or creating, with a `VarMap`) its parameters from `vb`.
    pub fn new(config: &MlpConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let (d, h, e) = (config.data_dim, config.hidden, config.embedding_dim);
        let fourier = match config.embedding {
            // `W` is a parameter (saved and loaded with the rest) but detached: never trained.
            MlpEmbedding::Fourier { scale, .. } => {
                let w = vb.pp("embed").get_with_hints(
                    e / 2,
                    "W",
                    Init::Randn {
                        mean: 0.0,
                        stdev: scale,
                    },
                )?;
                Some(GaussianFourierProjection::from_weight(w.detach())?)
            }
            MlpEmbedding::Positional => None,
        };
        let temb0 = dense(vb.pp("temb").pp(0), e, h)?;
        let temb1 = dense(vb.pp("temb").pp(1), h, h)?;
        let input = dense(vb.pp("input"), d, h)?;
        let layers = (0..config.n_layers)
            .map(|i| {
                let vbi = vb.pp("layers").pp(i);
                Ok((dense(vbi.pp("linear"), h, h)?, dense(vbi.pp("temb"), h, h)?))
            })
            .collect::<Result<Vec<_>>>()?;
        let output = dense(vb.pp("output"), h, d)?;
        Ok(Self {
            config: config.clone(),
            fourier,
            temb0,
            temb1,
            input,
            layers,
            output,
        })
    }

    /// The configuration the network was built with.
    pub fn config(&self) -> &MlpConfig {
        &self.config
    }

    /// The time embedding $e(\text{label})$, `[B, embedding_dim]`.
    fn embed(&self, labels: &Tensor) -> Result<Tensor> {
        match (self.config.embedding, &self.fourier) {
            (MlpEmbedding::Fourier { log_label, .. }, Some(proj)) => {
                let s = if log_label {
                    labels.log()?
                } else {
                    labels.clone()
                };
                proj.forward(&s)
            }
            _ => Ok(get_timestep_embedding(labels, self.config.embedding_dim)?
                .to_dtype(labels.dtype())?),
        }
    }

    /// The network output for `x: [B, D]` and `labels: [B]` (float, or integer labels which
    /// are cast to `x`'s dtype). Errors with [`Error::Input`] on a wrong shape, a non-float `x`,
    /// or non-positive labels where $\log(\text{label})$ or $1/\text{label}$ is taken.
    ///
    /// On the CPU in float32 the network runs as one fused op (`sde_kernels::mlp`: blocked
    /// GEMMs, vector SiLU, the time path computed once when all labels are equal) with its own
    /// backward pass; elsewhere, and in [`forward_reference`](Self::forward_reference), as plain
    /// candle ops. The two agree to float32 rounding (tested).
    pub fn forward(&self, x: &Tensor, labels: &Tensor) -> Result<Tensor> {
        self.forward_with(x, labels, Path::Auto(Save::Nothing))
    }

    /// [`forward`](Self::forward) in plain candle ops on every device and dtype: the reference
    /// the fused CPU path is tested against.
    pub fn forward_reference(&self, x: &Tensor, labels: &Tensor) -> Result<Tensor> {
        self.forward_with(x, labels, Path::CandleOps)
    }

    /// Whether the fused CPU kernel can run this call.
    fn fused_applies(&self, x: &Tensor) -> bool {
        x.device().is_cpu()
            && x.dtype() == DType::F32
            && self.temb0.weight().dtype() == DType::F32
            && self
                .fourier
                .as_ref()
                .is_none_or(|f| f.weight().dtype() == DType::F32)
    }

    /// The network as one [`FusedMlp`] op.
    fn forward_fused(&self, x: &Tensor, labels: &Tensor, save: Save) -> Result<Tensor> {
        let c = &self.config;
        let (time, freqs) = match (c.embedding, &self.fourier) {
            (MlpEmbedding::Fourier { log_label, .. }, Some(proj)) => (
                TimeEmbedding::Fourier { log_label },
                proj.weight().to_vec1::<f32>()?,
            ),
            _ => {
                // `get_timestep_embedding`'s table, computed the same way.
                let half = c.embedding_dim / 2;
                let emb = (10000f64.ln() / (half as f64 - 1.0)) as f32;
                (
                    TimeEmbedding::Positional,
                    (0..half).map(|k| (k as f32 * -emb).exp()).collect(),
                )
            }
        };
        let spec = MlpSpec {
            data_dim: c.data_dim,
            hidden: c.hidden,
            n_layers: c.n_layers,
            embedding_dim: c.embedding_dim,
            time,
            scale_by_label: c.scale_by_sigma,
        };
        let mut flat = Vec::with_capacity(6 + 4 * c.n_layers + 2);
        for lin in [&self.temb0, &self.temb1, &self.input]
            .into_iter()
            .chain(self.layers.iter().flat_map(|(a, b)| [a, b]))
            .chain([&self.output])
        {
            flat.push(lin.weight().flatten_all()?);
            let bias = lin
                .bias()
                .ok_or_else(|| Error::Config("Mlp: every layer has a bias".into()))?;
            flat.push(bias.clone());
        }
        let theta = Tensor::cat(&flat, 0)?;
        let op = FusedMlp {
            spec,
            freqs,
            save,
            saved: Default::default(),
        };
        Ok(x.contiguous()?
            .apply_op3(&labels.contiguous()?, &theta, op)?)
    }

    fn forward_with(&self, x: &Tensor, labels: &Tensor, path: Path) -> Result<Tensor> {
        let d = self.config.data_dim;
        let (b, dx) = match x.dims() {
            &[b, dx] => (b, dx),
            other => {
                return Err(Error::Input(format!(
                    "Mlp expects x of shape [B, {d}], got {other:?}"
                )))
            }
        };
        if dx != d {
            return Err(Error::Input(format!(
                "Mlp expects x of shape [B, {d}], got [{b}, {dx}]"
            )));
        }
        if !x.dtype().is_float() {
            return Err(Error::Input(format!(
                "Mlp expects a float x, got {:?}",
                x.dtype()
            )));
        }
        if labels.dims() != [b] {
            return Err(Error::Input(format!(
                "Mlp expects labels of shape [{b}], got {:?}",
                labels.dims()
            )));
        }
        let labels = labels.to_dtype(x.dtype())?;
        let needs_positive = self.config.scale_by_sigma
            || matches!(
                self.config.embedding,
                MlpEmbedding::Fourier {
                    log_label: true,
                    ..
                }
            );
        if needs_positive && b > 0 {
            let min = labels.to_dtype(DType::F64)?.min(0)?.to_scalar::<f64>()?;
            if min.is_nan() || min <= 0.0 {
                return Err(Error::Input(format!(
                    "Mlp with a log-label embedding or scale_by_sigma needs labels > 0 \
                     (sigma), got min {min}"
                )));
            }
        }
        if let Path::Auto(save) = path {
            if self.fused_applies(x) {
                return self.forward_fused(x, &labels, save);
            }
        }
        let emb = self.embed(&labels)?;
        let temb = self.temb1.forward(&self.temb0.forward(&emb)?.silu()?)?;
        let temb = temb.silu()?;
        let mut h = self.input.forward(x)?;
        for (linear, tproj) in &self.layers {
            h = (linear.forward(&h)? + tproj.forward(&temb)?)?.silu()?;
        }
        let out = self.output.forward(&h)?;
        if self.config.scale_by_sigma {
            Ok(out.broadcast_div(&labels.unsqueeze(1)?)?)
        } else {
            Ok(out)
        }
    }
}

impl sde_core::ScoreModel for Mlp {
    /// The MLP has no dropout: both modes compute the same function (training mode only keeps
    /// the fused kernel's activations for the backward pass).
    fn forward_t(
        &self,
        x: &Tensor,
        labels: &Tensor,
        mode: sde_core::Mode<'_>,
    ) -> sde_core::Result<Tensor> {
        // Training backpropagates: keep the activations for the backward pass.
        let save = match mode {
            sde_core::Mode::Train(_) => Save::Activations,
            sde_core::Mode::Eval => Save::Nothing,
        };
        Ok(self.forward_with(x, labels, Path::Auto(save))?)
    }
}
