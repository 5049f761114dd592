//! Strict weight loading: a [`VarBuilder`] backend that records what the network reads.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

use super::safetensors_io::read_safetensors;
use crate::error::{Error, Result};

/// Everything that did not match between a weight file and the network built from it.
///
/// Produced by [`StrictWeights::report`]; [`StrictWeights::finish`] turns a non-empty report
/// into [`Error::WeightMismatch`] whose message lists every entry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WeightReport {
    /// Parameters the network asked for that the file does not have: `(name, expected shape)`.
    pub missing: Vec<(String, Shape)>,
    /// Tensors in the file the network never read: `(name, stored shape)`.
    pub unused: Vec<(String, Shape)>,
    /// `(name, shape the network expects, shape stored)`.
    pub wrong_shape: Vec<(String, Shape, Shape)>,
    /// `(name, dtype the network expects, dtype stored)`.
    pub wrong_dtype: Vec<(String, DType, DType)>,
}

impl WeightReport {
    /// True when the file and the network agree exactly.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty()
            && self.unused.is_empty()
            && self.wrong_shape.is_empty()
            && self.wrong_dtype.is_empty()
    }
}

impl fmt::Display for WeightReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            let items: Vec<String> = self
                .missing
                .iter()
                .map(|(n, s)| format!("{n} {:?}", s.dims()))
                .collect();
            parts.push(format!(
                "{} missing: [{}]",
                self.missing.len(),
                items.join(", ")
            ));
        }
        if !self.unused.is_empty() {
            let items: Vec<String> = self
                .unused
                .iter()
                .map(|(n, s)| format!("{n} {:?}", s.dims()))
                .collect();
            parts.push(format!(
                "{} unused: [{}]",
                self.unused.len(),
                items.join(", ")
            ));
        }
        if !self.wrong_shape.is_empty() {
            let items: Vec<String> = self
                .wrong_shape
                .iter()
                .map(|(n, want, got)| {
                    format!("{n}: expected {:?}, file has {:?}", want.dims(), got.dims())
                })
                .collect();
            parts.push(format!(
                "{} wrong shape: [{}]",
                self.wrong_shape.len(),
                items.join(", ")
            ));
        }
        if !self.wrong_dtype.is_empty() {
            let items: Vec<String> = self
                .wrong_dtype
                .iter()
                .map(|(n, want, got)| format!("{n}: expected {want:?}, file has {got:?}"))
                .collect();
            parts.push(format!(
                "{} wrong dtype: [{}]",
                self.wrong_dtype.len(),
                items.join(", ")
            ));
        }
        if parts.is_empty() {
            write!(f, "all weights match")
        } else {
            write!(f, "{}", parts.join("; "))
        }
    }
}

/// How a stored tensor's dtype may differ from the dtype the network asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DTypePolicy {
    /// The stored dtype must equal the requested one (the default).
    #[default]
    Exact,
    /// A floating-point tensor may be cast to another floating-point dtype (e.g. `f32` weights
    /// into an `f64` network for a precision check, `bf16` weights into `f32`); integer and
    /// float never mix.
    CastFloats,
}

#[derive(Debug, Default)]
struct Record {
    /// Every name the network asked for, with the shape it expected (`None` for unchecked
    /// reads).
    requested: BTreeMap<String, Option<Shape>>,
    missing: BTreeMap<String, Shape>,
    wrong_shape: BTreeMap<String, (Shape, Shape)>,
    wrong_dtype: BTreeMap<String, (DType, DType)>,
}

struct Backend {
    tensors: Arc<HashMap<String, Tensor>>,
    record: Arc<Mutex<Record>>,
    policy: DTypePolicy,
}

fn poisoned() -> candle_core::Error {
    candle_core::Error::Msg("strict weight record: mutex poisoned".into())
}

impl Backend {
    fn dtype_ok(&self, want: DType, got: DType) -> bool {
        want == got || (self.policy == DTypePolicy::CastFloats && want.is_float() && got.is_float())
    }
}

impl SimpleBackend for Backend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut rec = self.record.lock().map_err(|_| poisoned())?;
        match rec.requested.get(name).cloned() {
            Some(Some(prev)) if prev != s => {
                // The network asked twice with different shapes: report it as a shape error.
                rec.wrong_shape.insert(name.to_string(), (s.clone(), prev));
            }
            _ => {
                rec.requested.insert(name.to_string(), Some(s.clone()));
            }
        }
        // Whatever is wrong, hand back a placeholder of the requested shape so that building
        // continues and `finish` can list every problem at once.
        let placeholder = || Tensor::zeros(s.clone(), dtype, dev);
        let Some(t) = self.tensors.get(name) else {
            rec.missing.insert(name.to_string(), s.clone());
            return placeholder();
        };
        let mut ok = true;
        if t.shape() != &s {
            rec.wrong_shape
                .insert(name.to_string(), (s.clone(), t.shape().clone()));
            ok = false;
        }
        if !self.dtype_ok(dtype, t.dtype()) {
            rec.wrong_dtype.insert(name.to_string(), (dtype, t.dtype()));
            ok = false;
        }
        drop(rec);
        if ok {
            t.to_device(dev)?.to_dtype(dtype)
        } else {
            placeholder()
        }
    }

    /// Unchecked reads are for buffers the network validates itself (the `sigmas` table,
    /// read as `f64` whatever its stored float dtype, and compared with the config): they
    /// count as used, and are converted to the requested dtype without a dtype check.
    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let mut rec = self.record.lock().map_err(|_| poisoned())?;
        rec.requested.entry(name.to_string()).or_insert(None);
        drop(rec);
        let Some(t) = self.tensors.get(name) else {
            // No shape to build a placeholder from: this read has to fail now.
            candle_core::bail!("strict weights: no tensor `{name}`")
        };
        t.to_device(dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// Named weights loaded **strictly** into a network built through a [`VarBuilder`].
///
/// Shape-checked reads (`vb.get`, `get_with_hints`) are checked for shape and dtype (see
/// [`DTypePolicy`]); unchecked reads (`vb.get_unchecked*`), which networks use for buffers
/// they validate themselves such as `sigmas`, are only marked as used.
///
/// The reference loads its checkpoints with `load_state_dict(..., strict=False)`, which silently
/// ignores missing and unexpected keys. Here the [`VarBuilder`] from [`vb`](Self::vb) records
/// every parameter the network reads; a missing key, a shape or dtype that differs from what
/// the network asks for, or a tensor the network never reads is collected (a zero placeholder
/// is handed out so that building goes on), and [`finish`](Self::finish) reports them **all**
/// at once as [`Error::WeightMismatch`]. [`build`](Self::build) does both in one call.
///
/// ```
/// use std::collections::HashMap;
/// use candle_core::{DType, Device, Tensor};
/// use score_nets::checkpoint::StrictWeights;
///
/// let dev = Device::Cpu;
/// let mut tensors = HashMap::new();
/// tensors.insert("lin.weight".to_string(), Tensor::ones((3, 2), DType::F32, &dev)?);
/// tensors.insert("lin.bias".to_string(), Tensor::zeros(3, DType::F32, &dev)?);
///
/// // Everything read, shapes right: the layer is built.
/// let lin = StrictWeights::new(tensors.clone()).build(DType::F32, &dev, |vb| {
///     Ok(candle_nn::linear(2, 3, vb.pp("lin"))?)
/// })?;
///
/// // A network that expects other shapes and never reads `lin.bias`: one error lists both.
/// let err = StrictWeights::new(tensors)
///     .build(DType::F32, &dev, |vb| Ok(candle_nn::linear_no_bias(4, 3, vb.pp("lin"))?))
///     .unwrap_err();
/// let msg = err.to_string();
/// assert!(msg.contains("lin.bias") && msg.contains("lin.weight: expected [3, 4]"));
/// # Ok::<(), score_nets::Error>(())
/// ```
pub struct StrictWeights {
    tensors: Arc<HashMap<String, Tensor>>,
    record: Arc<Mutex<Record>>,
    policy: DTypePolicy,
    source: String,
}

impl fmt::Debug for StrictWeights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StrictWeights")
            .field("source", &self.source)
            .field("n_tensors", &self.tensors.len())
            .field("policy", &self.policy)
            .finish()
    }
}

impl StrictWeights {
    /// Strict weights over named tensors (e.g. from
    /// [`load_reference_checkpoint`](super::load_reference_checkpoint)).
    pub fn new(tensors: HashMap<String, Tensor>) -> Self {
        Self {
            tensors: Arc::new(tensors),
            record: Arc::default(),
            policy: DTypePolicy::Exact,
            source: "tensors".to_string(),
        }
    }

    /// Reads a safetensors file (on the CPU). A missing, truncated or corrupt file is
    /// [`Error::Checkpoint`].
    pub fn from_safetensors(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let (tensors, _metadata) = read_safetensors(path)?;
        Ok(Self {
            source: path.display().to_string(),
            ..Self::new(tensors)
        })
    }

    /// Names where the weights came from (a path, `"ckpt.pth (EMA)"`) in error messages.
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }

    /// Sets how stored dtypes may differ from the network's (default [`DTypePolicy::Exact`]).
    pub fn dtype_policy(mut self, policy: DTypePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The tensors, by name.
    pub fn tensors(&self) -> &HashMap<String, Tensor> {
        &self.tensors
    }

    /// A [`VarBuilder`] for building a network with parameters of `dtype` on `device`.
    /// Every read is recorded; call [`finish`](Self::finish) after building.
    pub fn vb(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        let backend = Backend {
            tensors: self.tensors.clone(),
            record: self.record.clone(),
            policy: self.policy,
        };
        VarBuilder::from_backend(Box::new(backend), dtype, device.clone())
    }

    /// What did not match so far: missing, unused (never read), wrong shape, wrong dtype.
    pub fn report(&self) -> Result<WeightReport> {
        let rec = self
            .record
            .lock()
            .map_err(|_| Error::WeightMismatch("strict weight record: mutex poisoned".into()))?;
        let requested: BTreeSet<&String> = rec.requested.keys().collect();
        let mut unused: Vec<(String, Shape)> = self
            .tensors
            .iter()
            .filter(|(k, _)| !requested.contains(k))
            .map(|(k, t)| (k.clone(), t.shape().clone()))
            .collect();
        unused.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(WeightReport {
            missing: rec
                .missing
                .iter()
                .map(|(k, s)| (k.clone(), s.clone()))
                .collect(),
            unused,
            wrong_shape: rec
                .wrong_shape
                .iter()
                .map(|(k, (a, b))| (k.clone(), a.clone(), b.clone()))
                .collect(),
            wrong_dtype: rec
                .wrong_dtype
                .iter()
                .map(|(k, (a, b))| (k.clone(), *a, *b))
                .collect(),
        })
    }

    /// Ends strict loading: `Ok` when the network read every tensor with the stored shape and
    /// dtype and found all it asked for, else [`Error::WeightMismatch`] listing every problem.
    pub fn finish(self) -> Result<()> {
        let report = self.report()?;
        if report.is_clean() {
            Ok(())
        } else {
            Err(Error::WeightMismatch(format!("{} ({report})", self.source)))
        }
    }

    /// Builds a network with `f` from these weights and [`finish`](Self::finish)es: the network
    /// comes back only if the weights match it exactly. When `f` itself fails, a missing or
    /// mis-shaped tensor (whose zero placeholder may have caused the failure) is reported in
    /// preference to `f`'s error.
    pub fn build<M>(
        self,
        dtype: DType,
        device: &Device,
        f: impl FnOnce(VarBuilder<'static>) -> Result<M>,
    ) -> Result<M> {
        let built = f(self.vb(dtype, device));
        let report = self.report()?;
        let mismatch = match &built {
            // Building stopped early: what it never reached is not "unused".
            Err(_) => {
                !(report.missing.is_empty()
                    && report.wrong_shape.is_empty()
                    && report.wrong_dtype.is_empty())
            }
            Ok(_) => !report.is_clean(),
        };
        if mismatch {
            return Err(Error::WeightMismatch(format!("{} ({report})", self.source)));
        }
        built
    }
}
