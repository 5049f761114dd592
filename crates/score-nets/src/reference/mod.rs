//! One call from a reference config: the network, the SDE, the label convention, the sampling
//! settings and the checkpoint weights of a `score_sde_pytorch` config dumped as JSON.

mod schema;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::{Map, Value};

use sde_core::{Mode, ScoreModel, SubVpSde, VeSde, VpSde};

use crate::checkpoint::StrictWeights;
use crate::checkpoint::{load_reference_checkpoint, parameter_order, CheckpointWeights};
use crate::{Ddpm, DdpmConfig, EmbeddingType, NcsnPp, NcsnPpConfig, Result};

pub(crate) use schema::Section;
use schema::{check_schema, config_err, kind};

/// A reference `ml_collections` config (`configs/ve/cifar10_ncsnpp_continuous.py`, ...) read
/// from its JSON dump, with its key schema checked.
///
/// [`ReferenceConfig::from_json`] takes either the config itself or a file that holds it
/// under a `config` member (the parity vectors' `.json`). Every key must be one the
/// reference's config files set ([`ReferenceConfig`] rejects a misspelt key with an error
/// naming it; known keys this crate does not use, e.g. `config.eval.*`, are accepted).
///
/// From it, one call each:
/// - [`network`](Self::network): the [`NetworkConfig`] (`model.name`: `ncsnpp` for NCSN++ and
///   DDPM++, `ddpm`);
/// - [`sde`](Self::sde): the [`ReferenceSde`] of `training.sde` with the model's
///   `sigma_min`/`sigma_max` or `beta_min`/`beta_max` and `N = model.num_scales`;
/// - [`continuous`](Self::continuous): the label convention (`training.continuous`) for
///   [`sde_core::ScoreModelFn::new`];
/// - [`sampling`](Self::sampling): the [`SamplingSettings`] (`config.sampling` and the
///   `sampling_eps` of `run_lib.py`);
/// - [`load_checkpoint`](Self::load_checkpoint): the network with the model or EMA weights of
///   a reference checkpoint (`checkpoint_<n>.pth`), loaded strictly, without the caller
///   knowing parameter order or which parameters are frozen.
///
/// ```
/// use score_nets::{NetworkConfig, ReferenceConfig, ReferenceSde};
/// let json = serde_json::json!({
///     "config": {
///         "training": {"sde": "vesde", "continuous": true},
///         "data": {"image_size": 16, "num_channels": 3, "centered": false},
///         "model": serde_json::to_value(score_nets::NcsnPpConfig::small_ncsnpp_ve())?
///             .as_object().unwrap().iter()
///             .filter(|(k, _)| !matches!(k.as_str(), "image_size" | "num_channels" | "centered"))
///             .map(|(k, v)| (k.clone(), v.clone()))
///             .chain([("name".to_string(), "ncsnpp".into())])
///             .collect::<serde_json::Map<_, _>>(),
///     }
/// });
/// let cfg = ReferenceConfig::from_json(&json)?;
/// assert!(matches!(cfg.network()?, NetworkConfig::NcsnPp(_)));
/// assert!(matches!(cfg.sde()?, ReferenceSde::Ve(_)));
/// assert!(cfg.continuous()?);
/// // A misspelt key is an error that names it.
/// let mut bad = json.clone();
/// bad["config"]["model"]["nff"] = 16.into();
/// let err = ReferenceConfig::from_json(&bad).unwrap_err().to_string();
/// assert!(err.contains("config.model.nff"), "{err}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceConfig {
    config: Map<String, Value>,
}

/// The network a reference config builds (`model.name`).
#[derive(Debug, Clone, PartialEq)]
pub enum NetworkConfig {
    /// `ncsnpp`: NCSN++ and DDPM++ ([`NcsnPp`]).
    NcsnPp(NcsnPpConfig),
    /// `ddpm`: the DDPM U-Net ([`Ddpm`]).
    Ddpm(DdpmConfig),
}

/// The SDE of a reference config (`training.sde`, `run_lib.train`'s `sde_lib` call).
#[derive(Debug, Clone)]
pub enum ReferenceSde {
    /// `vesde`: `VESDE(sigma_min, sigma_max, N = num_scales)`.
    Ve(VeSde),
    /// `vpsde`: `VPSDE(beta_min, beta_max, N = num_scales)`.
    Vp(VpSde),
    /// `subvpsde`: `subVPSDE(beta_min, beta_max, N = num_scales)`.
    SubVp(SubVpSde),
}

/// Predictor of the PC sampler (`sampling.predictor`; names of `sampling.py`'s registry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictorName {
    /// `euler_maruyama`.
    EulerMaruyama,
    /// `reverse_diffusion`.
    ReverseDiffusion,
    /// `ancestral_sampling`.
    AncestralSampling,
    /// `none`: corrector only (annealed Langevin dynamics).
    None,
}

/// Corrector of the PC sampler (`sampling.corrector`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CorrectorName {
    /// `langevin`.
    Langevin,
    /// `ald`: annealed Langevin dynamics.
    Ald,
    /// `none`: predictor only.
    None,
}

/// Sampler family (`sampling.method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplingMethod {
    /// `pc`: predictor–corrector.
    Pc,
    /// `ode`: the probability-flow ODE with RK45.
    Ode,
}

/// The sampling settings of a reference config, as plain data (`score-nets` does not depend on
/// `sde-solvers`; map them onto its predictors and correctors). Mirrors
/// `sampling.get_sampling_fn(config, sde, shape, inverse_scaler, sampling_eps)`.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingSettings {
    /// `sampling.method`; `None` when the config does not set it (the default configs do not).
    pub method: Option<SamplingMethod>,
    /// `sampling.predictor`; `None` when not set.
    pub predictor: Option<PredictorName>,
    /// `sampling.corrector`; `None` when not set.
    pub corrector: Option<CorrectorName>,
    /// `sampling.snr` of the Langevin corrector.
    pub snr: f64,
    /// `sampling.n_steps_each`: corrector steps per noise level.
    pub n_steps_each: usize,
    /// `sampling.noise_removal`: a final denoising step without noise.
    pub noise_removal: bool,
    /// `sampling.probability_flow`: predictors follow the probability-flow ODE.
    pub probability_flow: bool,
    /// The smallest sampling time, by SDE (`run_lib.py`): 1e-5 for VE, 1e-3 for VP / sub-VP.
    pub sampling_eps: f64,
}

/// A network built from a reference config: NCSN++ / DDPM++ or DDPM, as one
/// [`ScoreModel`].
#[derive(Debug, Clone)]
pub enum ScoreNet {
    /// NCSN++ / DDPM++.
    NcsnPp(NcsnPp),
    /// DDPM.
    Ddpm(Ddpm),
}

impl ScoreModel for ScoreNet {
    fn forward_t(&self, x: &Tensor, labels: &Tensor, mode: Mode<'_>) -> sde_core::Result<Tensor> {
        match self {
            ScoreNet::NcsnPp(n) => n.forward_t(x, labels, mode),
            ScoreNet::Ddpm(n) => n.forward_t(x, labels, mode),
        }
    }
}

impl NetworkConfig {
    /// Builds the network under `vb` (a seeded init, or weights).
    pub fn build(&self, vb: candle_nn::VarBuilder) -> Result<ScoreNet> {
        Ok(match self {
            NetworkConfig::NcsnPp(c) => ScoreNet::NcsnPp(NcsnPp::new(c.clone(), vb)?),
            NetworkConfig::Ddpm(c) => ScoreNet::Ddpm(Ddpm::new(c, vb)?),
        })
    }

    /// The parameters PyTorch builds with `requires_grad = False`, which the reference's EMA
    /// list leaves out: NCSN++'s Gaussian Fourier projection `W` (`all_modules.0.W`); none
    /// for the positional embedding and for DDPM.
    pub fn frozen_parameters(&self) -> Vec<String> {
        match self {
            NetworkConfig::NcsnPp(c) if c.embedding_type == EmbeddingType::Fourier => {
                vec!["all_modules.0.W".to_string()]
            }
            _ => Vec::new(),
        }
    }

    /// `[n for n, p in model.named_parameters() if p.requires_grad]`: the order of the
    /// reference's EMA `shadow_params`.
    pub fn trainable_parameter_order(&self) -> Result<Vec<String>> {
        let frozen = self.frozen_parameters();
        Ok(parameter_order(|vb| self.build(vb))?
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| !frozen.contains(n))
            .collect())
    }

    /// Builds the network with `tensors` (a `state_dict`: names → tensors), strictly: every
    /// key, shape and dtype must match ([`StrictWeights`]); `source` names them in errors.
    pub fn load_weights(
        &self,
        tensors: HashMap<String, Tensor>,
        source: &str,
        dtype: DType,
        device: &Device,
    ) -> Result<ScoreNet> {
        StrictWeights::new(tensors)
            .with_source(source)
            .build(dtype, device, |vb| self.build(vb))
    }

    /// The network with the model or EMA weights of a reference training checkpoint
    /// (`torch.save` zip, `checkpoints/checkpoint_<n>.pth`), loaded strictly. The EMA list is
    /// matched to the network's trainable parameters ([`Self::trainable_parameter_order`]);
    /// frozen parameters and buffers come from the model weights.
    pub fn load_checkpoint(
        &self,
        path: impl AsRef<Path>,
        which: CheckpointWeights,
        dtype: DType,
        device: &Device,
    ) -> Result<ScoreNet> {
        let path = path.as_ref();
        let order = match which {
            CheckpointWeights::Ema => self.trainable_parameter_order()?,
            CheckpointWeights::Model => Vec::new(),
        };
        let ck = load_reference_checkpoint(path, which, &order)?;
        let source = format!("{} ({which:?})", path.display());
        self.load_weights(ck.tensors, &source, dtype, device)
    }
}

impl ReferenceConfig {
    /// Reads a config dump: the config object itself, or any object holding it under a
    /// `config` member (the parity vectors' files). Anything else, and any key outside the
    /// reference's config schema, is [`crate::Error::Config`] naming it.
    pub fn from_json(json: &Value) -> Result<Self> {
        let Value::Object(top) = json else {
            return Err(config_err(format!(
                "expected a JSON object (the config, or a file with a `config` member), got {}",
                kind(json)
            )));
        };
        let config = match top.get("config") {
            Some(Value::Object(c)) => c,
            Some(other) => {
                return Err(config_err(format!(
                    "the `config` member must be an object, got {}",
                    kind(other)
                )))
            }
            None => top,
        };
        check_schema(config)?;
        if !config.contains_key("model") {
            return Err(config_err(
                "no `model` section: not a reference config (pass the whole file or its \
                 `config` member)"
                    .into(),
            ));
        }
        Ok(Self {
            config: config.clone(),
        })
    }

    /// Reads a JSON file ([`from_json`](Self::from_json)); an unreadable or non-JSON file is
    /// [`crate::Error::Checkpoint`] naming it.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path)?;
        let json: Value = serde_json::from_slice(&bytes).map_err(|e| crate::Error::Checkpoint {
            path: path.display().to_string(),
            reason: format!("not JSON: {e}"),
        })?;
        Self::from_json(&json)
    }

    /// The checked `config` object.
    pub fn as_json(&self) -> &Map<String, Value> {
        &self.config
    }

    pub(crate) fn section(&self, name: &'static str) -> Section<'_> {
        Section {
            name,
            map: self.config.get(name).and_then(Value::as_object),
        }
    }

    /// The network of `model.name` (required: `ncsnpp` or `ddpm`), every key it reads
    /// required (see [`NcsnPpConfig::from_reference_json`], [`DdpmConfig::from_reference_json`]).
    pub fn network(&self) -> Result<NetworkConfig> {
        let model = self.section("model");
        match model.req("name", "model selection", Section::str)? {
            "ncsnpp" => Ok(NetworkConfig::NcsnPp(NcsnPpConfig::from_reference(self)?)),
            "ddpm" => Ok(NetworkConfig::Ddpm(DdpmConfig::from_reference(self)?)),
            other => Err(config_err(format!(
                "`config.model.name` = `{other}` is not supported (ncsnpp, ddpm)"
            ))),
        }
    }

    /// The SDE (`training.sde` = `vesde` | `vpsde` | `subvpsde`, case-insensitive) with the
    /// model's parameters and `N = model.num_scales`.
    pub fn sde(&self) -> Result<ReferenceSde> {
        let (training, model) = (self.section("training"), self.section("model"));
        let name = training.req("sde", "the SDE", Section::str)?.to_lowercase();
        let n = model.req("num_scales", "the SDE", Section::usize)?;
        let beta = || -> Result<(f64, f64)> {
            Ok((
                model.req("beta_min", "the VP SDE", Section::f64)?,
                model.req("beta_max", "the VP SDE", Section::f64)?,
            ))
        };
        Ok(match name.as_str() {
            "vesde" => ReferenceSde::Ve(VeSde::new(
                model.req("sigma_min", "the VE SDE", Section::f64)?,
                model.req("sigma_max", "the VE SDE", Section::f64)?,
                n,
            )?),
            "vpsde" => {
                let (a, b) = beta()?;
                ReferenceSde::Vp(VpSde::new(a, b, n)?)
            }
            "subvpsde" => {
                let (a, b) = beta()?;
                ReferenceSde::SubVp(SubVpSde::new(a, b, n)?)
            }
            other => {
                return Err(config_err(format!(
                    "`config.training.sde` = `{other}` is not one of vesde, vpsde, subvpsde"
                )))
            }
        })
    }

    /// `training.continuous` (default `true`, as `default_*_configs.py`): the `continuous`
    /// argument of [`sde_core::ScoreModelFn::new`].
    pub fn continuous(&self) -> Result<bool> {
        Ok(self.section("training").bool("continuous")?.unwrap_or(true))
    }

    /// The sampling settings: `config.sampling` (defaults of `default_*_configs.py` for
    /// `snr` = 0.16, `n_steps_each` = 1, `noise_removal` = true, `probability_flow` = false
    /// when absent) and `sampling_eps` of the SDE ([`sde`](Self::sde) must succeed).
    pub fn sampling(&self) -> Result<SamplingSettings> {
        let s = self.section("sampling");
        let snr = s.f64("snr")?.unwrap_or(0.16);
        if snr <= 0.0 {
            return Err(config_err(format!(
                "`config.sampling.snr` must be > 0, got {snr}"
            )));
        }
        let n_steps_each = s.usize("n_steps_each")?.unwrap_or(1);
        let sampling_eps = match self.sde()? {
            ReferenceSde::Ve(_) => 1e-5,
            ReferenceSde::Vp(_) | ReferenceSde::SubVp(_) => 1e-3,
        };
        Ok(SamplingSettings {
            method: s.enum_of("method")?,
            predictor: s.enum_of("predictor")?,
            corrector: s.enum_of("corrector")?,
            snr,
            n_steps_each,
            noise_removal: s.bool("noise_removal")?.unwrap_or(true),
            probability_flow: s.bool("probability_flow")?.unwrap_or(false),
            sampling_eps,
        })
    }

    /// Builds the network with `tensors` (a `state_dict`: names → tensors), strictly: every
    /// key, shape and dtype must match ([`NetworkConfig::load_weights`]).
    pub fn load_weights(
        &self,
        tensors: HashMap<String, Tensor>,
        source: &str,
        dtype: DType,
        device: &Device,
    ) -> Result<ScoreNet> {
        self.network()?.load_weights(tensors, source, dtype, device)
    }

    /// The network with the model or EMA weights of a reference training checkpoint
    /// (`checkpoints/checkpoint_<n>.pth`), loaded strictly ([`NetworkConfig::load_checkpoint`]).
    pub fn load_checkpoint(
        &self,
        path: impl AsRef<Path>,
        which: CheckpointWeights,
        dtype: DType,
        device: &Device,
    ) -> Result<ScoreNet> {
        self.network()?.load_checkpoint(path, which, dtype, device)
    }
}
