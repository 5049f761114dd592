//! The reference's own training checkpoints (`torch.save` zip files).
//!
//! Candle's PyTorch reader (`candle_core::pickle::read_all_with_key`) only returns the tensors
//! that are direct values of a dict, so it cannot reach the EMA weights, which the reference
//! saves as a positional *list* (`ema.shadow_params`), nor the `step` integer. We therefore
//! run candle's unpickler ([`candle_core::pickle::Stack`]) on `data.pkl` ourselves, walk the
//! resulting object tree, and read the tensor storages (`data/<key>` entries of the zip)
//! with our own bounds-checked code (candle's `rebuild_args` indexes its argument tuples
//! without checking their length, which would panic on a corrupt file).

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::Path;

use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// Which weights of a reference checkpoint to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointWeights {
    /// The raw model weights (`state['model']`, the last optimiser step).
    Model,
    /// The exponential moving average of the weights (`state['ema'].shadow_params`), which
    /// the paper samples with.
    Ema,
}

/// Weights read from a reference training checkpoint, ready for
/// [`StrictWeights::new`](super::StrictWeights::new).
#[derive(Debug, Clone)]
pub struct ReferenceCheckpoint {
    /// `state_dict` names (the `module.` prefix of `torch.nn.DataParallel` removed) → tensors,
    /// with the dtypes PyTorch stored, except that a floating-point tensor whose dtype differs
    /// from that of most tensors (in the reference only the `float64` `sigmas` buffer) is
    /// cast to it, so that a network of one dtype reads every tensor strictly.
    pub tensors: HashMap<String, Tensor>,
    /// The training step (`state['step']`), if present.
    pub step: Option<i64>,
    /// The EMA decay (`state['ema'].decay`), if present.
    pub ema_decay: Option<f64>,
}

pub(super) fn ckpt_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Loads the model or EMA weights of a checkpoint saved by the reference's training loop:
/// `torch.save({'optimizer': ..., 'model': model.state_dict(), 'ema': ema.state_dict(),
/// 'step': step}, path)` with the model wrapped in `torch.nn.DataParallel`.
///
/// * `Model`: every tensor of `state['model']`, with `module.` stripped from the names.
/// * `Ema`: `state['ema']['shadow_params']` is a list over the parameters that require a
///   gradient, in `model.parameters()` order; `trainable_order` names them (that order with
///   the frozen parameters, e.g. the Fourier projection `W` of NCSN++, left out: in Python,
///   `[n for n, p in model.named_parameters() if p.requires_grad]`). The list must have
///   exactly that many tensors and each must have the shape of the model parameter of that
///   name. Frozen parameters and buffers (e.g. `sigmas`) are taken from the model weights.
///   `trainable_order` is ignored for `Model`.
///
/// A file that is not a `torch.save` zip (e.g. the legacy pre-1.6 format, or garbage), is
/// truncated, lacks `model` (or `ema` for `Ema`), or whose EMA list does not fit
/// `trainable_order` is [`Error::Checkpoint`]; never a panic.
///
/// Every floating-point tensor whose dtype differs from that of most tensors is cast to it:
/// in the reference this is only the `sigmas` buffer, which PyTorch keeps in `float64`
/// while the parameters are `float32` (see [`ReferenceCheckpoint::tensors`]).
#[doc(alias = "restore_checkpoint")]
pub fn load_reference_checkpoint(
    path: impl AsRef<Path>,
    which: CheckpointWeights,
    trainable_order: &[String],
) -> Result<ReferenceCheckpoint> {
    let path = path.as_ref();
    let mut archive = TorchZip::open(path)?;
    let root = archive.root_object()?;
    let Object::Dict(entries) = root else {
        return Err(ckpt_err(
            path,
            "the pickled object is not a dict: not a reference training checkpoint",
        ));
    };
    let mut model = None;
    let mut ema = None;
    let mut step = None;
    for (k, v) in entries {
        match k {
            Object::Unicode(k) if k == "model" => model = Some(v),
            Object::Unicode(k) if k == "ema" => ema = Some(v),
            Object::Unicode(k) if k == "step" => step = v.int_or_long().ok(),
            _ => {}
        }
    }
    let model = model.ok_or_else(|| {
        ckpt_err(
            path,
            "no `model` entry: not a reference training checkpoint (a bare state_dict? \
             load it with candle_core::pickle::read_all and StrictWeights::new)",
        )
    })?;

    // Model state dict.
    let Object::Dict(model_entries) = model else {
        return Err(ckpt_err(path, "`model` is not a state dict"));
    };
    let mut order: Vec<String> = Vec::new();
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (k, v) in model_entries {
        let Object::Unicode(name) = k else {
            return Err(ckpt_err(path, "`model` has a non-string key"));
        };
        if name == "_metadata" {
            continue;
        }
        let t = archive
            .tensor(&v)
            .map_err(|r| ckpt_err(path, format!("model entry `{name}`: {r}")))?;
        let name = name.strip_prefix("module.").unwrap_or(&name).to_string();
        if tensors.insert(name.clone(), t).is_some() {
            return Err(ckpt_err(
                path,
                format!("model entry `{name}` appears twice"),
            ));
        }
        order.push(name);
    }

    let mut ema_decay = None;
    if which == CheckpointWeights::Ema {
        let ema = ema.ok_or_else(|| ckpt_err(path, "no `ema` entry in the checkpoint"))?;
        let Object::Dict(ema_entries) = ema else {
            return Err(ckpt_err(path, "`ema` is not a dict"));
        };
        let mut shadow = None;
        for (k, v) in ema_entries {
            match k {
                Object::Unicode(k) if k == "shadow_params" => shadow = Some(v),
                Object::Unicode(k) if k == "decay" => {
                    ema_decay = match v {
                        Object::Float(d) => Some(d),
                        _ => None,
                    }
                }
                _ => {}
            }
        }
        let Some(Object::List(shadow)) = shadow else {
            return Err(ckpt_err(path, "`ema.shadow_params` missing or not a list"));
        };
        if shadow.len() != trainable_order.len() {
            return Err(ckpt_err(
                path,
                format!(
                    "`ema.shadow_params` has {} tensors but `trainable_order` names {} \
                     parameters",
                    shadow.len(),
                    trainable_order.len()
                ),
            ));
        }
        for (i, (obj, name)) in shadow.iter().zip(trainable_order).enumerate() {
            let t = archive
                .tensor(obj)
                .map_err(|r| ckpt_err(path, format!("ema.shadow_params[{i}]: {r}")))?;
            let Some(m) = tensors.get(name) else {
                return Err(ckpt_err(
                    path,
                    format!("trainable parameter `{name}` is not in the model state dict"),
                ));
            };
            if m.shape() != t.shape() || m.dtype() != t.dtype() {
                return Err(ckpt_err(
                    path,
                    format!(
                        "ema.shadow_params[{i}] is {:?} {:?} but parameter `{name}` is {:?} \
                         {:?}: wrong parameter order?",
                        t.dims(),
                        t.dtype(),
                        m.dims(),
                        m.dtype()
                    ),
                ));
            }
            tensors.insert(name.clone(), t);
        }
    }

    // Cast the odd floating-point tensors (the float64 `sigmas` buffer) to the common dtype.
    let param_dtype = majority_float_dtype(tensors.values());
    if let Some(pd) = param_dtype {
        for t in tensors.values_mut() {
            if t.dtype().is_float() && t.dtype() != pd {
                *t = t.to_dtype(pd)?;
            }
        }
    }
    Ok(ReferenceCheckpoint {
        tensors,
        step,
        ema_decay,
    })
}

fn majority_float_dtype<'a>(ts: impl Iterator<Item = &'a Tensor>) -> Option<DType> {
    let mut counts: Vec<(DType, usize)> = Vec::new();
    for t in ts.filter(|t| t.dtype().is_float()) {
        match counts.iter_mut().find(|(d, _)| *d == t.dtype()) {
            Some((_, c)) => *c += 1,
            None => counts.push((t.dtype(), 1)),
        }
    }
    counts.into_iter().max_by_key(|(_, c)| *c).map(|(d, _)| d)
}

/// A `torch.save` zip archive held in memory.
pub(super) struct TorchZip {
    path: std::path::PathBuf,
    archive: zip::ZipArchive<std::io::BufReader<std::fs::File>>,
    /// `<archive name>/` (torch names every entry under one top-level folder).
    prefix: String,
    storages: HashMap<String, std::sync::Arc<Vec<u8>>>,
}

impl TorchZip {
    pub(super) fn open(path: &Path) -> Result<Self> {
        let mut file = std::fs::File::open(path).map_err(|e| ckpt_err(path, e.to_string()))?;
        let mut magic = [0u8; 2];
        let n = file
            .read(&mut magic)
            .map_err(|e| ckpt_err(path, e.to_string()))?;
        if n == 2 && magic[0] == 0x80 {
            return Err(ckpt_err(
                path,
                "legacy (pre-1.6) torch.save format; re-save it with a recent PyTorch",
            ));
        }
        let archive = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| {
            ckpt_err(
                path,
                format!("not a torch.save zip archive (truncated or corrupt?): {e}"),
            )
        })?;
        let pkl = archive
            .file_names()
            .filter_map(|n| n.ok())
            .find(|n| n.ends_with("data.pkl"))
            .map(|n| n.into_owned())
            .ok_or_else(|| ckpt_err(path, "no `data.pkl` in the archive: not a torch.save file"))?;
        let prefix = pkl.strip_suffix("data.pkl").unwrap_or("").to_string();
        Ok(Self {
            path: path.to_path_buf(),
            archive,
            prefix,
            storages: HashMap::new(),
        })
    }

    fn read_entry(&mut self, name: &str) -> std::result::Result<Vec<u8>, String> {
        let mut f = self
            .archive
            .by_name(name)
            .map_err(|e| format!("archive entry `{name}`: {e}"))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)
            .map_err(|e| format!("archive entry `{name}`: {e}"))?;
        Ok(buf)
    }

    pub(super) fn root_object(&mut self) -> Result<Object> {
        let name = format!("{}data.pkl", self.prefix);
        let pkl = self
            .read_entry(&name)
            .map_err(|r| ckpt_err(&self.path, r))?;
        // candle's unpickler can panic on damaged input (a LONG1 opcode of more than 8 bytes
        // overflows its shift in builds with overflow checks): a panic there is a corrupt file.
        let unpickled = std::panic::catch_unwind(move || {
            let mut stack = Stack::empty();
            let mut reader = std::io::BufReader::new(Cursor::new(pkl));
            stack.read_loop(&mut reader)?;
            stack.finalize()
        });
        match unpickled {
            Ok(Ok(obj)) => Ok(obj),
            Ok(Err(e)) => Err(ckpt_err(
                &self.path,
                format!("cannot unpickle data.pkl: {e}"),
            )),
            Err(_) => Err(ckpt_err(
                &self.path,
                "cannot unpickle data.pkl: the unpickler failed on malformed data".to_string(),
            )),
        }
    }

    fn storage(&mut self, key: &str) -> std::result::Result<std::sync::Arc<Vec<u8>>, String> {
        if let Some(s) = self.storages.get(key) {
            return Ok(s.clone());
        }
        let name = format!("{}data/{key}", self.prefix);
        let s = std::sync::Arc::new(self.read_entry(&name)?);
        self.storages.insert(key.to_string(), s.clone());
        Ok(s)
    }

    /// The tensor a pickled `torch._utils._rebuild_tensor_v2(...)` (possibly wrapped in
    /// `_rebuild_parameter`) call describes.
    pub(super) fn tensor(&mut self, obj: &Object) -> std::result::Result<Tensor, String> {
        let info = TensorRef::parse(obj)?;
        let storage = self.storage(&info.storage_key)?;
        info.read(&storage)
    }
}

/// What `_rebuild_tensor_v2(storage, storage_offset, size, stride, ...)` says.
pub(super) struct TensorRef {
    pub(super) storage_key: String,
    pub(super) dtype: DType,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

fn as_usize(o: &Object) -> Option<usize> {
    match o {
        Object::Int(i) => usize::try_from(*i).ok(),
        Object::Long(i) => usize::try_from(*i).ok(),
        _ => None,
    }
}

fn usize_tuple(o: &Object) -> Option<Vec<usize>> {
    match o {
        Object::Tuple(v) => v.iter().map(as_usize).collect(),
        _ => None,
    }
}

fn is_class(o: &Object, module: &str, class: &str) -> bool {
    matches!(o, Object::Class { module_name, class_name }
        if module_name == module && class_name == class)
}

impl TensorRef {
    pub(super) fn parse(obj: &Object) -> std::result::Result<Self, String> {
        let not_tensor = || "not a tensor".to_string();
        let Object::Reduce { callable, args } = obj else {
            return Err(not_tensor());
        };
        if is_class(callable, "torch._utils", "_rebuild_parameter") {
            return match args.as_ref() {
                Object::Tuple(a) if !a.is_empty() => Self::parse(&a[0]),
                _ => Err(not_tensor()),
            };
        }
        if !is_class(callable, "torch._utils", "_rebuild_tensor_v2") {
            return Err(format!("unsupported tensor constructor {callable:?}"));
        }
        let Object::Tuple(a) = args.as_ref() else {
            return Err(not_tensor());
        };
        let bad = || "malformed _rebuild_tensor_v2 arguments".to_string();
        if a.len() < 4 {
            return Err(bad());
        }
        let Object::PersistentLoad(pid) = &a[0] else {
            return Err(bad());
        };
        // ('storage', <class torch.FloatStorage>, key, location, numel)
        let Object::Tuple(pid) = pid.as_ref() else {
            return Err(bad());
        };
        if pid.len() < 3 {
            return Err(bad());
        }
        let dtype = match &pid[1] {
            Object::Class { class_name, .. } => match class_name.as_str() {
                "FloatStorage" => DType::F32,
                "DoubleStorage" => DType::F64,
                "HalfStorage" => DType::F16,
                "BFloat16Storage" => DType::BF16,
                "LongStorage" => DType::I64,
                "IntStorage" => DType::I32,
                "ShortStorage" => DType::I16,
                "ByteStorage" | "BoolStorage" => DType::U8,
                other => return Err(format!("unsupported storage type {other}")),
            },
            _ => return Err(bad()),
        };
        let Object::Unicode(storage_key) = &pid[2] else {
            return Err(bad());
        };
        let offset = as_usize(&a[1]).ok_or_else(bad)?;
        let size = usize_tuple(&a[2]).ok_or_else(bad)?;
        let stride = usize_tuple(&a[3]).ok_or_else(bad)?;
        if size.len() != stride.len() {
            return Err(bad());
        }
        Ok(Self {
            storage_key: storage_key.clone(),
            dtype,
            offset,
            size,
            stride,
        })
    }

    /// Gathers the (possibly strided) elements from the storage bytes, bounds-checked.
    pub(super) fn read(&self, storage: &[u8]) -> std::result::Result<Tensor, String> {
        let es = self.dtype.size_in_bytes();
        let n_storage = storage.len() / es;
        let numel = self
            .size
            .iter()
            .try_fold(1usize, |a, &s| a.checked_mul(s))
            .filter(|n| n.checked_mul(es).is_some())
            .ok_or_else(|| format!("tensor size {:?} overflows", self.size))?;
        if numel > n_storage && self.stride.contains(&0) {
            // An expanded view (stride 0) would be materialised far larger than its storage.
            return Err(format!(
                "expanded (stride-0) tensor of size {:?} over {n_storage} stored elements is \
                 not supported",
                self.size
            ));
        }
        let too_short = || {
            format!(
                "storage `{}` has {n_storage} elements, too few for offset {} size {:?} \
                 stride {:?} (truncated file?)",
                self.storage_key, self.offset, self.size, self.stride
            )
        };
        let mut contiguous = true;
        let mut expect = 1usize;
        for (s, st) in self.size.iter().zip(&self.stride).rev() {
            if *s > 1 && *st != expect {
                contiguous = false;
            }
            expect = expect.saturating_mul(*s);
        }
        let bytes: Vec<u8> = if numel == 0 {
            Vec::new()
        } else if contiguous {
            let start = self.offset.checked_mul(es).ok_or_else(too_short)?;
            let end = start
                .checked_add(numel.checked_mul(es).ok_or_else(too_short)?)
                .ok_or_else(too_short)?;
            storage.get(start..end).ok_or_else(too_short)?.to_vec()
        } else {
            // Largest element index reached, checked before gathering.
            let mut max = self.offset;
            for (s, st) in self.size.iter().zip(&self.stride) {
                max = max
                    .checked_add(s.saturating_sub(1).checked_mul(*st).ok_or_else(too_short)?)
                    .ok_or_else(too_short)?;
            }
            if max >= n_storage {
                return Err(too_short());
            }
            let mut out = Vec::with_capacity(numel * es);
            let mut idx = vec![0usize; self.size.len()];
            for _ in 0..numel {
                let e = self.offset
                    + idx
                        .iter()
                        .zip(&self.stride)
                        .map(|(i, s)| i * s)
                        .sum::<usize>();
                out.extend_from_slice(&storage[e * es..(e + 1) * es]);
                for d in (0..idx.len()).rev() {
                    idx[d] += 1;
                    if idx[d] < self.size[d] {
                        break;
                    }
                    idx[d] = 0;
                }
            }
            out
        };
        Tensor::from_raw_buffer(&bytes, self.dtype, &self.size, &Device::Cpu)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(m: &str, c: &str) -> Object {
        Object::Class {
            module_name: m.into(),
            class_name: c.into(),
        }
    }

    fn ints(v: &[i64]) -> Object {
        Object::Tuple(v.iter().map(|&i| Object::Long(i)).collect())
    }

    /// `_rebuild_tensor_v2(('storage', FloatStorage, '0', 'cpu', n), offset, size, stride)`.
    fn tensor_obj(offset: i64, size: &[i64], stride: &[i64]) -> Object {
        let pid = Object::Tuple(vec![
            Object::Unicode("storage".into()),
            class("torch", "FloatStorage"),
            Object::Unicode("0".into()),
            Object::Unicode("cpu".into()),
            Object::Int(12),
        ]);
        Object::Reduce {
            callable: Box::new(class("torch._utils", "_rebuild_tensor_v2")),
            args: Box::new(Object::Tuple(vec![
                Object::PersistentLoad(Box::new(pid)),
                Object::Long(offset),
                ints(size),
                ints(stride),
                Object::Bool(false),
                Object::Dict(vec![]),
            ])),
        }
    }

    fn storage() -> Vec<u8> {
        (0..12u32).flat_map(|i| (i as f32).to_le_bytes()).collect()
    }

    #[test]
    fn contiguous_offset_and_strided_views() {
        let s = storage();
        let t = TensorRef::parse(&tensor_obj(2, &[2, 3], &[3, 1])).unwrap();
        let t = t.read(&s).unwrap();
        assert_eq!(t.to_vec2::<f32>().unwrap(), [[2., 3., 4.], [5., 6., 7.]]);
        // A transposed (column-major) view: element (i, j) at i + 3 j.
        let t = TensorRef::parse(&tensor_obj(0, &[3, 2], &[1, 3])).unwrap();
        let t = t.read(&s).unwrap();
        assert_eq!(t.to_vec2::<f32>().unwrap(), [[0., 3.], [1., 4.], [2., 5.]]);
        // Wrapped in _rebuild_parameter, as nn.Parameter is pickled.
        let p = Object::Reduce {
            callable: Box::new(class("torch._utils", "_rebuild_parameter")),
            args: Box::new(Object::Tuple(vec![
                tensor_obj(0, &[], &[]),
                Object::Bool(true),
                Object::Dict(vec![]),
            ])),
        };
        let t = TensorRef::parse(&p).unwrap().read(&s).unwrap();
        assert_eq!(t.dims(), &[] as &[usize]);
        assert_eq!(t.to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn malformed_descriptions_are_errors_not_panics() {
        let s = storage();
        // Out of the storage, contiguous and strided.
        let t = TensorRef::parse(&tensor_obj(10, &[2, 3], &[3, 1])).unwrap();
        assert!(t.read(&s).is_err());
        let t = TensorRef::parse(&tensor_obj(0, &[3, 5], &[1, 3])).unwrap();
        assert!(t.read(&s).is_err());
        // Sizes whose product overflows, expanded views, negative sizes.
        let t = TensorRef::parse(&tensor_obj(0, &[1 << 40, 1 << 40], &[0, 0])).unwrap();
        assert!(t.read(&s).is_err());
        let t = TensorRef::parse(&tensor_obj(0, &[1000], &[0])).unwrap();
        assert!(t.read(&s).is_err());
        assert!(TensorRef::parse(&tensor_obj(0, &[-1], &[1])).is_err());
        // Size and stride of different ranks, too few arguments, foreign objects.
        assert!(TensorRef::parse(&tensor_obj(0, &[2, 2], &[1])).is_err());
        let short = Object::Reduce {
            callable: Box::new(class("torch._utils", "_rebuild_tensor_v2")),
            args: Box::new(Object::Tuple(vec![Object::Int(0)])),
        };
        assert!(TensorRef::parse(&short).is_err());
        let empty_param = Object::Reduce {
            callable: Box::new(class("torch._utils", "_rebuild_parameter")),
            args: Box::new(Object::Tuple(vec![])),
        };
        assert!(TensorRef::parse(&empty_param).is_err());
        assert!(TensorRef::parse(&Object::Int(3)).is_err());
        let other = Object::Reduce {
            callable: Box::new(class("numpy", "ndarray")),
            args: Box::new(Object::Tuple(vec![])),
        };
        assert!(TensorRef::parse(&other).is_err());
    }
}
