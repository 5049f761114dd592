//! The key schema of the reference's configs (`configs/default_*_configs.py` and
//! `configs/**/*.py` of `score_sde_pytorch`), and typed readers over one section of a JSON dump.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::{Error, Result};

/// Every key the reference's config files set, per section (`config.<section>.<key>`), read
/// from `configs/default_{cifar10,celeba,lsun}_configs.py` and every `configs/**/*.py` at
/// commit `cb1f359`. Keys this crate does not use are accepted and ignored; any other key is
/// an error (a misspelt key would otherwise silently leave the default in place).
pub(crate) const SECTIONS: &[(&str, &[&str])] = &[
    (
        "training",
        &[
            "batch_size",
            "n_iters",
            "snapshot_freq",
            "log_freq",
            "eval_freq",
            "snapshot_freq_for_preemption",
            "snapshot_sampling",
            "likelihood_weighting",
            "continuous",
            // sic: `configs/ve/ncsn/*.py` and `ncsnv2/*.py` set this misspelt key
            "continuouse",
            "reduce_mean",
            "sde",
            "loss",
        ],
    ),
    (
        "sampling",
        &[
            "n_steps_each",
            "noise_removal",
            "probability_flow",
            "snr",
            "method",
            "predictor",
            "corrector",
        ],
    ),
    (
        "eval",
        &[
            "begin_ckpt",
            "end_ckpt",
            "batch_size",
            "enable_sampling",
            "num_samples",
            "enable_loss",
            "enable_bpd",
            "bpd_dataset",
        ],
    ),
    (
        "data",
        &[
            "dataset",
            "image_size",
            "random_flip",
            "centered",
            "uniform_dequantization",
            "num_channels",
            "category",
            "tfrecords_path",
        ],
    ),
    (
        "model",
        &[
            "name",
            "sigma_min",
            "sigma_max",
            "sigma_begin",
            "num_scales",
            "beta_min",
            "beta_max",
            "dropout",
            "embedding_type",
            "ema_rate",
            "normalization",
            "nonlinearity",
            "nf",
            "ch_mult",
            "num_res_blocks",
            "attn_resolutions",
            "resamp_with_conv",
            "conditional",
            "fir",
            "fir_kernel",
            "skip_rescale",
            "resblock_type",
            "progressive",
            "progressive_input",
            "progressive_combine",
            "attention_type",
            "init_scale",
            "fourier_scale",
            "conv_size",
            "scale_by_sigma",
            "interpolation",
        ],
    ),
    (
        "optim",
        &[
            "weight_decay",
            "optimizer",
            "lr",
            "beta1",
            "eps",
            "warmup",
            "grad_clip",
            "amsgrad",
        ],
    ),
];

/// Top-level scalar keys of a config (`config.seed`, `config.device`).
pub(crate) const TOP_LEVEL: &[&str] = &["seed", "device"];

pub(crate) fn config_err(msg: String) -> Error {
    Error::Config(format!("reference config: {msg}"))
}

/// Checks a `config` object against [`SECTIONS`]: every top-level key is a known section or
/// scalar, every section an object, every key of a section known.
pub(crate) fn check_schema(config: &Map<String, Value>) -> Result<()> {
    for (k, v) in config {
        if TOP_LEVEL.contains(&k.as_str()) {
            continue;
        }
        let Some((_, keys)) = SECTIONS.iter().find(|(s, _)| s == k) else {
            return Err(config_err(format!(
                "unknown key `config.{k}` (the reference's configs have the sections {} and \
                 the keys {})",
                SECTIONS
                    .iter()
                    .map(|(s, _)| *s)
                    .collect::<Vec<_>>()
                    .join(", "),
                TOP_LEVEL.join(", ")
            )));
        };
        let Value::Object(section) = v else {
            return Err(config_err(format!(
                "`config.{k}` must be an object, got {}",
                kind(v)
            )));
        };
        for key in section.keys() {
            if !keys.contains(&key.as_str()) {
                return Err(config_err(format!(
                    "unknown key `config.{k}.{key}` (not in the reference's config schema; \
                     a misspelling?)"
                )));
            }
        }
    }
    Ok(())
}

/// The JSON type of `v`, for messages.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// One section of a checked config, with readers that name `config.<section>.<key>` in errors.
#[derive(Clone, Copy)]
pub(crate) struct Section<'a> {
    pub(crate) name: &'static str,
    pub(crate) map: Option<&'a Map<String, Value>>,
}

impl<'a> Section<'a> {
    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.and_then(|m| m.get(key))
    }

    fn path(&self, key: &str) -> String {
        format!("config.{}.{key}", self.name)
    }

    fn missing(&self, key: &str, reader: &str) -> Error {
        config_err(format!("missing `{}` ({reader} reads it)", self.path(key)))
    }

    fn bad(&self, key: &str, want: &str, v: &Value) -> Error {
        config_err(format!("`{}` must be {want}, got {v}", self.path(key)))
    }

    /// A required value read by `reader` (named in the error).
    pub(crate) fn req<T>(
        &self,
        key: &str,
        reader: &str,
        f: impl Fn(&Self, &str) -> Result<Option<T>>,
    ) -> Result<T> {
        f(self, key)?.ok_or_else(|| self.missing(key, reader))
    }

    pub(crate) fn usize(&self, key: &str) -> Result<Option<usize>> {
        self.get(key)
            .map(|v| {
                v.as_u64()
                    .and_then(|u| usize::try_from(u).ok())
                    .ok_or_else(|| self.bad(key, "a non-negative integer", v))
            })
            .transpose()
    }

    pub(crate) fn f64(&self, key: &str) -> Result<Option<f64>> {
        self.get(key)
            .map(|v| {
                v.as_f64()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| self.bad(key, "a finite number", v))
            })
            .transpose()
    }

    pub(crate) fn bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key)
            .map(|v| v.as_bool().ok_or_else(|| self.bad(key, "a boolean", v)))
            .transpose()
    }

    pub(crate) fn str(&self, key: &str) -> Result<Option<&'a str>> {
        self.get(key)
            .map(|v| v.as_str().ok_or_else(|| self.bad(key, "a string", v)))
            .transpose()
    }

    pub(crate) fn usizes(&self, key: &str) -> Result<Option<Vec<usize>>> {
        self.get(key)
            .map(|v| {
                let bad = || self.bad(key, "an array of non-negative integers", v);
                v.as_array()
                    .ok_or_else(bad)?
                    .iter()
                    .map(|x| x.as_u64().map(|u| u as usize).ok_or_else(bad))
                    .collect()
            })
            .transpose()
    }

    pub(crate) fn f64s(&self, key: &str) -> Result<Option<Vec<f64>>> {
        self.get(key)
            .map(|v| {
                let bad = || self.bad(key, "an array of numbers", v);
                v.as_array()
                    .ok_or_else(bad)?
                    .iter()
                    .map(|x| x.as_f64().ok_or_else(bad))
                    .collect()
            })
            .transpose()
    }

    /// A string naming an enum variant (case-insensitive, as the reference lowercases).
    pub(crate) fn enum_of<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.get(key)
            .map(|v| {
                let s = v
                    .as_str()
                    .ok_or_else(|| self.bad(key, "a string", v))?
                    .to_lowercase();
                serde_json::from_value(Value::String(s))
                    .map_err(|_| self.bad(key, "one of the reference's names", v))
            })
            .transpose()
    }
}
