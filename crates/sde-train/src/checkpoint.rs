//! Crash-safe training checkpoints in safetensors: model, EMA, Adam moments, step, RNG state
//! and the run's config, written atomically and verified on load.
//!
//! Layout: tensors `model/<name>`, `ema/<name>`, `adam.m/<name>`, `adam.v/<name>` (names as in
//! the model's `VarMap`); the safetensors header metadata holds `format`
//! (`sde-train-checkpoint/2`), `step`, `adam_step`, `ema_decay`, `ema_num_updates`, the ChaCha
//! RNG state (`rng_seed` hex, `rng_stream`, `rng_word_pos`), `config` (JSON) and `checksum`.
//!
//! The checksum (FNV-1a 64) covers everything else in the file: every metadata entry but
//! itself (key and value, in key order) and every tensor's name, dtype, shape and bytes (in name
//! order), each length-prefixed. So an edited step, RNG state, Adam step, EMA count or config,
//! an added or removed metadata key, a renamed tensor and a flipped bit in the data are all
//! caught even where the safetensors framing still parses. Format 1 files (whose metadata was
//! outside the checksum) are refused with [`Error::UnsupportedCheckpointVersion`].
//!
//! Writes go through a temporary sibling `.<name>.tmp-<pid>` ([`write_atomic`]); one left by a
//! process killed mid-write is removed by [`remove_stale_temp_files`], which
//! [`crate::Trainer::with_checkpoint_dir`] runs on start.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::{Error, Result};

/// Format tag written to and required in every checkpoint.
pub const CHECKPOINT_FORMAT: &str = "sde-train-checkpoint/2";

/// The metadata key of the checksum (the one entry it does not cover).
const CHECKSUM_KEY: &str = "checksum";

/// The exact state of a ChaCha RNG (`rand_chacha`): key, stream and word position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RngState {
    /// The 32-byte key (`get_seed`).
    pub seed: [u8; 32],
    /// The stream number (`get_stream`).
    pub stream: u64,
    /// Words consumed so far (`get_word_pos`).
    pub word_pos: u128,
}

impl RngState {
    /// The state of `rng`.
    pub fn of(rng: &rand_chacha::ChaCha8Rng) -> Self {
        Self {
            seed: rng.get_seed(),
            stream: rng.get_stream(),
            word_pos: rng.get_word_pos(),
        }
    }

    /// A generator in exactly this state.
    pub fn restore(&self) -> rand_chacha::ChaCha8Rng {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::from_seed(self.seed);
        rng.set_stream(self.stream);
        rng.set_word_pos(self.word_pos);
        rng
    }
}

/// Everything a checkpoint holds. Tensor lists are `(name, tensor)` in the model's variable
/// order ([`crate::named_vars`]).
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Optimisation steps done.
    pub step: u64,
    /// Model weights θ.
    pub model: Vec<(String, Tensor)>,
    /// EMA shadow weights θ̄.
    pub ema: Vec<(String, Tensor)>,
    /// EMA target decay.
    pub ema_decay: f64,
    /// EMA `num_updates` (`None` without the warm-up).
    pub ema_num_updates: Option<u64>,
    /// Adam's step count.
    pub adam_step: u64,
    /// Adam's first moments m.
    pub adam_m: Vec<(String, Tensor)>,
    /// Adam's second moments v.
    pub adam_v: Vec<(String, Tensor)>,
    /// The training RNG.
    pub rng: RngState,
    /// The run's configuration (JSON).
    pub config: serde_json::Value,
}

/// FNV-1a 64-bit hash, folded over several byte slices.
fn fnv1a(h: u64, bytes: &[u8]) -> u64 {
    let mut h = h;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// [`fnv1a`] of `bytes` preceded by their length, so that concatenations are unambiguous.
fn fnv1a_field(h: u64, bytes: &[u8]) -> u64 {
    fnv1a(fnv1a(h, &(bytes.len() as u64).to_le_bytes()), bytes)
}

/// The format-2 checksum: every metadata entry but [`CHECKSUM_KEY`] (in key order), then every
/// tensor's name, dtype, shape and bytes (in name order).
fn checksum_v2<'a>(
    meta: &HashMap<String, String>,
    tensors: impl Iterator<Item = (&'a str, Dtype, &'a [usize], &'a [u8])>,
) -> u64 {
    let mut keys: Vec<&String> = meta.keys().filter(|k| *k != CHECKSUM_KEY).collect();
    keys.sort();
    let mut h = FNV_OFFSET;
    for k in keys {
        h = fnv1a_field(h, k.as_bytes());
        h = fnv1a_field(h, meta[k].as_bytes());
    }
    for (name, dtype, shape, data) in tensors {
        h = fnv1a_field(h, name.as_bytes());
        h = fnv1a_field(h, format!("{dtype:?}").as_bytes());
        let dims: Vec<u8> = shape
            .iter()
            .flat_map(|d| (*d as u64).to_le_bytes())
            .collect();
        h = fnv1a_field(h, &dims);
        h = fnv1a_field(h, data);
    }
    h
}

/// Host bytes of a tensor: f64 stays f64, every other float dtype is stored as f32 (exact for
/// f16 / bf16 and converted back on load).
fn tensor_bytes(t: &Tensor) -> Result<(Dtype, Vec<u8>)> {
    let flat = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F64 => (
            Dtype::F64,
            flat.to_vec1::<f64>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        DType::F32 | DType::F16 | DType::BF16 => (
            Dtype::F32,
            flat.to_dtype(DType::F32)?
                .to_vec1::<f32>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        other => {
            return Err(Error::ShapeMismatch {
                what: "checkpoint tensor dtype",
                expected: "a float dtype".into(),
                got: format!("{other:?}"),
            })
        }
    })
}

fn corrupt(path: &Path, reason: impl Into<String>) -> Error {
    Error::CorruptCheckpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn view_tensor(path: &Path, name: &str, v: &TensorView<'_>) -> Result<Tensor> {
    let data = v.data();
    let shape = v.shape().to_vec();
    let t = match v.dtype() {
        Dtype::F32 => {
            let vals: Vec<f32> = data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Tensor::from_vec(vals, shape, &Device::Cpu)?
        }
        Dtype::F64 => {
            let vals: Vec<f64> = data
                .chunks_exact(8)
                .map(|c| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(c);
                    f64::from_le_bytes(b)
                })
                .collect();
            Tensor::from_vec(vals, shape, &Device::Cpu)?
        }
        other => {
            return Err(corrupt(
                path,
                format!("tensor {name} has unexpected dtype {other:?}"),
            ))
        }
    };
    Ok(t)
}

/// Writes `ckpt` to `path` atomically: a temporary file in the same directory, `fsync`, then
/// `rename` over `path` (and an `fsync` of the directory), so a crash at any moment leaves
/// either the old file or the new one, never a partial one.
pub fn save_checkpoint(path: impl AsRef<Path>, ckpt: &Checkpoint) -> Result<()> {
    let path = path.as_ref();
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (prefix, list) in [
        ("model", &ckpt.model),
        ("ema", &ckpt.ema),
        ("adam.m", &ckpt.adam_m),
        ("adam.v", &ckpt.adam_v),
    ] {
        for (name, t) in list {
            let (dt, bytes) = tensor_bytes(t)?;
            owned.push((format!("{prefix}/{name}"), dt, t.dims().to_vec(), bytes));
        }
    }
    // safetensors orders the data by name; hash in that order.
    owned.sort_by(|a, b| a.0.cmp(&b.0));
    let mut views = Vec::with_capacity(owned.len());
    for (name, dt, shape, bytes) in &owned {
        let v = TensorView::new(*dt, shape.clone(), bytes)
            .map_err(|e| corrupt(path, format!("cannot encode {name}: {e}")))?;
        views.push((name.clone(), v));
    }
    let seed_hex: String = ckpt.rng.seed.iter().map(|b| format!("{b:02x}")).collect();
    let mut meta: HashMap<String, String> = [
        ("format", CHECKPOINT_FORMAT.to_string()),
        ("step", ckpt.step.to_string()),
        ("adam_step", ckpt.adam_step.to_string()),
        ("ema_decay", format!("{:?}", ckpt.ema_decay)),
        (
            "ema_num_updates",
            ckpt.ema_num_updates
                .map_or_else(|| "none".to_string(), |n| n.to_string()),
        ),
        ("rng_seed", seed_hex),
        ("rng_stream", ckpt.rng.stream.to_string()),
        ("rng_word_pos", ckpt.rng.word_pos.to_string()),
        ("config", serde_json::to_string(&ckpt.config)?),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let checksum = checksum_v2(
        &meta,
        owned
            .iter()
            .map(|(n, dt, shape, b)| (n.as_str(), *dt, shape.as_slice(), b.as_slice())),
    );
    meta.insert(CHECKSUM_KEY.to_string(), format!("{checksum:016x}"));
    let bytes = safetensors::tensor::serialize(views, Some(meta))
        .map_err(|e| corrupt(path, format!("cannot serialise: {e}")))?;
    // The metadata map's order is random per process: sort it, so that the same training
    // state gives the same file (and sha256) in every process.
    write_atomic(path, &sde_core::file_bytes::canonical_safetensors(bytes))
}

/// Atomic file write: temporary sibling `.<file name>.tmp-<pid>`, `write_all`, `sync_all`,
/// `rename`, directory `fsync`. On an error the temporary file is removed; one left by a process
/// killed mid-write is removed by [`remove_stale_temp_files`].
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "checkpoint".into());
    let tmp = dir.join(temp_name(&file_name, std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // Persist the rename itself; not every platform can open a directory, so best effort.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// The temporary sibling [`write_atomic`] writes `file_name` through, in process `pid`.
fn temp_name(file_name: &str, pid: u32) -> String {
    format!(".{file_name}.tmp-{pid}")
}

/// The pid of a [`write_atomic`] temporary file name (`.<name>.tmp-<pid>`), if it is one.
fn temp_pid(name: &str) -> Option<u32> {
    let (stem, pid) = name.strip_prefix('.')?.rsplit_once(".tmp-")?;
    if stem.is_empty() || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Whether process `pid` may still be writing: this process, or (where `/proc` exists) a
/// running one. Without `/proc` only this process counts.
fn writer_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let proc = Path::new("/proc");
    proc.is_dir() && proc.join(pid.to_string()).exists()
}

/// Removes the temporary files `.<name>.tmp-<pid>` that [`write_atomic`] left in `dir` when its
/// process was killed mid-write (a partial checkpoint, possibly tens of MB), and returns their
/// paths. Files of a process still running (this one, or a live pid under `/proc`) are kept,
/// as is everything else in `dir`. A missing `dir` has nothing to clean.
///
/// [`crate::Trainer::with_checkpoint_dir`] calls it on start.
pub fn remove_stale_temp_files(dir: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
    let dir = dir.as_ref();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut removed = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = temp_pid(&name) else {
            continue;
        };
        let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
        if !is_file || writer_alive(pid) {
            continue;
        }
        let p = entry.path();
        match std::fs::remove_file(&p) {
            Ok(()) => removed.push(p),
            // another process cleaned it first
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&p, e)),
        }
    }
    removed.sort();
    Ok(removed)
}

fn meta_get<'m>(path: &Path, meta: &'m HashMap<String, String>, key: &str) -> Result<&'m str> {
    meta.get(key)
        .map(|s| s.as_str())
        .ok_or_else(|| corrupt(path, format!("metadata key `{key}` is missing")))
}

fn meta_parse<T: std::str::FromStr>(
    path: &Path,
    meta: &HashMap<String, String>,
    key: &str,
) -> Result<T> {
    let s = meta_get(path, meta, key)?;
    s.parse()
        .map_err(|_| corrupt(path, format!("metadata `{key}` = {s:?} does not parse")))
}

/// Reads and verifies a checkpoint written by [`save_checkpoint`]. A missing file is
/// [`Error::Io`]; a truncated or garbled file, a wrong format tag, missing metadata or a
/// checksum mismatch is [`Error::CorruptCheckpoint`] naming the problem.
pub fn load_checkpoint(path: impl AsRef<Path>) -> Result<Checkpoint> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| {
        corrupt(
            path,
            format!(
                "not a complete safetensors file ({} bytes): {e}",
                bytes.len()
            ),
        )
    })?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| corrupt(path, format!("bad header: {e}")))?;
    let meta = header
        .metadata()
        .clone()
        .ok_or_else(|| corrupt(path, "no metadata (not an sde-train checkpoint)"))?;
    let format = meta_get(path, &meta, "format")?;
    if format != CHECKPOINT_FORMAT {
        return Err(Error::UnsupportedCheckpointVersion {
            path: path.to_path_buf(),
            found: format.to_string(),
            supported: CHECKPOINT_FORMAT,
        });
    }
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let mut views = Vec::with_capacity(names.len());
    for name in &names {
        let v = st
            .tensor(name)
            .map_err(|e| corrupt(path, format!("tensor {name}: {e}")))?;
        views.push(v);
    }
    // Verify before interpreting anything: the checksum covers every metadata entry too.
    let checksum = checksum_v2(
        &meta,
        names
            .iter()
            .zip(&views)
            .map(|(n, v)| (n.as_str(), v.dtype(), v.shape(), v.data())),
    );
    let want = meta_get(path, &meta, CHECKSUM_KEY)?;
    if want != format!("{checksum:016x}") {
        return Err(corrupt(
            path,
            format!("checksum mismatch (stored {want}, the file hashes to {checksum:016x}): the metadata or tensor data was edited or damaged"),
        ));
    }
    let mut lists: [Vec<(String, Tensor)>; 4] = Default::default();
    for (name, v) in names.iter().zip(&views) {
        let (slot, short) = match name.split_once('/') {
            Some(("model", n)) => (0, n),
            Some(("ema", n)) => (1, n),
            Some(("adam.m", n)) => (2, n),
            Some(("adam.v", n)) => (3, n),
            _ => return Err(corrupt(path, format!("unexpected tensor name {name:?}"))),
        };
        lists[slot].push((short.to_string(), view_tensor(path, name, v)?));
    }
    let seed_hex = meta_get(path, &meta, "rng_seed")?;
    let mut seed = [0u8; 32];
    if seed_hex.len() != 64 || !seed_hex.is_ascii() {
        return Err(corrupt(path, "metadata `rng_seed` must be 64 hex digits"));
    }
    for (i, b) in seed.iter_mut().enumerate() {
        *b = u8::from_str_radix(&seed_hex[2 * i..2 * i + 2], 16)
            .map_err(|_| corrupt(path, "metadata `rng_seed` must be 64 hex digits"))?;
    }
    let ema_num_updates = match meta_get(path, &meta, "ema_num_updates")? {
        "none" => None,
        _ => Some(meta_parse(path, &meta, "ema_num_updates")?),
    };
    let config: serde_json::Value = serde_json::from_str(meta_get(path, &meta, "config")?)
        .map_err(|e| corrupt(path, format!("metadata `config` is not JSON: {e}")))?;
    let [model, ema, adam_m, adam_v] = lists;
    Ok(Checkpoint {
        step: meta_parse(path, &meta, "step")?,
        model,
        ema,
        ema_decay: meta_parse(path, &meta, "ema_decay")?,
        ema_num_updates,
        adam_step: meta_parse(path, &meta, "adam_step")?,
        adam_m,
        adam_v,
        rng: RngState {
            seed,
            stream: meta_parse(path, &meta, "rng_stream")?,
            word_pos: meta_parse(path, &meta, "rng_word_pos")?,
        },
        config,
    })
}

/// Matches `stored` tensors to the expected `(name, shape)` list, converting to `dtype`:
/// a missing, extra or wrongly shaped tensor is [`Error::CheckpointMismatch`] naming it.
pub(crate) fn match_tensors(
    path: &Path,
    section: &str,
    stored: &[(String, Tensor)],
    expected: &[(String, Vec<usize>, DType, Device)],
) -> Result<Vec<Tensor>> {
    let map: HashMap<&str, &Tensor> = stored.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mismatch = |what: String| Error::CheckpointMismatch {
        path: path.to_path_buf(),
        what,
    };
    if let Some((extra, _)) = stored
        .iter()
        .find(|(n, _)| !expected.iter().any(|(e, ..)| e == n))
    {
        return Err(mismatch(format!(
            "{section}/{extra} is in the checkpoint but not in the model"
        )));
    }
    expected
        .iter()
        .map(|(name, shape, dtype, dev)| {
            let t = map.get(name.as_str()).ok_or_else(|| {
                mismatch(format!("{section}/{name} is missing from the checkpoint"))
            })?;
            if t.dims() != shape.as_slice() {
                return Err(mismatch(format!(
                    "{section}/{name} has shape {:?}, the model expects {shape:?}",
                    t.dims()
                )));
            }
            Ok(t.to_dtype(*dtype)?.to_device(dev)?)
        })
        .collect()
}

/// Which weights of a checkpoint to load into a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weights {
    /// The raw training weights θ.
    Model,
    /// The EMA weights θ̄ (what the paper samples with).
    Ema,
}

/// Loads the model or EMA weights of a checkpoint into `varmap` (e.g. to sample from a trained
/// model): every variable must be present with its shape.
pub fn load_weights(
    path: impl AsRef<Path>,
    varmap: &candle_nn::VarMap,
    which: Weights,
) -> Result<()> {
    let path = path.as_ref();
    let ckpt = load_checkpoint(path)?;
    let vars = crate::optim::named_vars(varmap);
    let expected: Vec<_> = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.dims().to_vec(), v.dtype(), v.device().clone()))
        .collect();
    let (section, list) = match which {
        Weights::Model => ("model", &ckpt.model),
        Weights::Ema => ("ema", &ckpt.ema),
    };
    let tensors = match_tensors(path, section, list, &expected)?;
    for ((_, var), t) in vars.iter().zip(tensors) {
        var.set(&t)?;
    }
    Ok(())
}

/// The checkpoint with the highest step in `dir` (`checkpoint_<step>.safetensors`), if any.
pub fn latest_checkpoint(dir: impl AsRef<Path>) -> Result<Option<PathBuf>> {
    let dir = dir.as_ref();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut best: Option<(u64, PathBuf)> = None;
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let step = name
            .strip_prefix("checkpoint_")
            .and_then(|s| s.strip_suffix(".safetensors"))
            .and_then(|s| s.parse::<u64>().ok());
        if let Some(s) = step {
            let better = match &best {
                Some((b, _)) => s > *b,
                None => true,
            };
            if better {
                best = Some((s, entry.path()));
            }
        }
    }
    Ok(best.map(|(_, p)| p))
}
