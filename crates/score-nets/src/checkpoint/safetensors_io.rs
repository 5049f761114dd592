//! Reading and atomically writing safetensors files.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use safetensors::tensor::{Dtype as StDtype, SafeTensors, View};

use crate::error::{Error, Result};

/// Named tensors and the header's `__metadata__` of a safetensors file.
pub type SafetensorsContents = (HashMap<String, Tensor>, HashMap<String, String>);

fn checkpoint_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

fn dtype_from_st(d: StDtype) -> Option<DType> {
    Some(match d {
        StDtype::U8 => DType::U8,
        StDtype::U32 => DType::U32,
        StDtype::I16 => DType::I16,
        StDtype::I32 => DType::I32,
        StDtype::I64 => DType::I64,
        StDtype::BF16 => DType::BF16,
        StDtype::F16 => DType::F16,
        StDtype::F32 => DType::F32,
        StDtype::F64 => DType::F64,
        _ => return None,
    })
}

fn dtype_to_st(d: DType) -> Option<StDtype> {
    Some(match d {
        DType::U8 => StDtype::U8,
        DType::U32 => StDtype::U32,
        DType::I16 => StDtype::I16,
        DType::I32 => StDtype::I32,
        DType::I64 => StDtype::I64,
        DType::BF16 => StDtype::BF16,
        DType::F16 => StDtype::F16,
        DType::F32 => StDtype::F32,
        DType::F64 => StDtype::F64,
        _ => return None,
    })
}

/// Reads every tensor (onto the CPU) and the `__metadata__` of a safetensors file.
///
/// A missing, truncated or corrupt file, or a dtype Candle cannot hold, is
/// [`Error::Checkpoint`] naming the file and the reason; never a panic.
pub fn read_safetensors(path: impl AsRef<Path>) -> Result<SafetensorsContents> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| checkpoint_err(path, e.to_string()))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| checkpoint_err(path, format!("not a valid safetensors file: {e:?}")))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let dtype = dtype_from_st(view.dtype()).ok_or_else(|| {
            checkpoint_err(
                path,
                format!("tensor `{name}` has unsupported dtype {:?}", view.dtype()),
            )
        })?;
        let t = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), &Device::Cpu)
            .map_err(|e| checkpoint_err(path, format!("tensor `{name}`: {e}")))?;
        out.insert(name, t);
    }
    let (_, meta) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| checkpoint_err(path, format!("not a valid safetensors file: {e:?}")))?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    Ok((out, metadata))
}

/// A tensor's bytes on the host, in safetensors' little-endian layout.
struct HostTensor {
    dtype: StDtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &HostTensor {
    fn dtype(&self) -> StDtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn le_bytes<T, const N: usize>(v: Vec<T>, f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    v.into_iter().flat_map(f).collect()
}

fn to_host(name: &str, t: &Tensor) -> Result<HostTensor> {
    let dtype = dtype_to_st(t.dtype()).ok_or_else(|| {
        Error::Input(format!(
            "cannot save tensor `{name}` of dtype {:?} as safetensors",
            t.dtype()
        ))
    })?;
    let flat = t.to_device(&Device::Cpu)?.flatten_all()?;
    let data = match t.dtype() {
        DType::U8 => flat.to_vec1::<u8>()?,
        DType::U32 => le_bytes(flat.to_vec1::<u32>()?, u32::to_le_bytes),
        DType::I16 => le_bytes(flat.to_vec1::<i16>()?, i16::to_le_bytes),
        DType::I32 => le_bytes(flat.to_vec1::<i32>()?, i32::to_le_bytes),
        DType::I64 => le_bytes(flat.to_vec1::<i64>()?, i64::to_le_bytes),
        DType::BF16 => le_bytes(flat.to_vec1::<half::bf16>()?, |x| x.to_le_bytes()),
        DType::F16 => le_bytes(flat.to_vec1::<half::f16>()?, |x| x.to_le_bytes()),
        DType::F32 => le_bytes(flat.to_vec1::<f32>()?, f32::to_le_bytes),
        DType::F64 => le_bytes(flat.to_vec1::<f64>()?, f64::to_le_bytes),
        other => {
            return Err(Error::Input(format!(
                "cannot save tensor `{name}` of dtype {other:?} as safetensors"
            )))
        }
    };
    Ok(HostTensor {
        dtype,
        shape: t.dims().to_vec(),
        data,
    })
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, `fsync`, then
/// `rename` over `path` (and, on Unix, `fsync` of the directory). A crash leaves either the old
/// file or the new one, never a truncated file.
pub fn write_atomically(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let path = path.as_ref();
    let file_name = path
        .file_name()
        .ok_or_else(|| checkpoint_err(path, "not a file path"))?;
    let dir: PathBuf = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        #[cfg(unix)]
        {
            if let Ok(d) = std::fs::File::open(&dir) {
                // Persist the rename; best effort (some filesystems refuse directory fsync).
                let _ = d.sync_all();
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(checkpoint_err(path, format!("cannot write: {e}")));
    }
    Ok(())
}

/// Saves named tensors (any device; copied to the host) as a safetensors file, with optional
/// header metadata, written atomically (see [`write_atomically`]).
pub fn save_safetensors<'a, I>(
    tensors: I,
    metadata: Option<HashMap<String, String>>,
    path: impl AsRef<Path>,
) -> Result<()>
where
    I: IntoIterator<Item = (&'a str, &'a Tensor)>,
{
    let path = path.as_ref();
    let mut host: Vec<(String, HostTensor)> = Vec::new();
    for (name, t) in tensors {
        host.push((name.to_string(), to_host(name, t)?));
    }
    let mut seen = std::collections::HashSet::new();
    for (n, _) in &host {
        if !seen.insert(n.as_str()) {
            return Err(Error::Input(format!("tensor name `{n}` given twice")));
        }
    }
    let bytes = safetensors::serialize(host.iter().map(|(n, t)| (n.as_str(), t)), metadata)
        .map_err(|e| checkpoint_err(path, format!("cannot serialize: {e:?}")))?;
    // Metadata comes as a HashMap (random order per process): sort the header so that the
    // same tensors and metadata give the same bytes in every process.
    write_atomically(path, &sde_core::file_bytes::canonical_safetensors(bytes))
}

/// Saves every variable of a [`VarMap`] (a network being trained) as a safetensors file,
/// atomically; names are the `VarBuilder` paths, i.e. the reference's `state_dict` keys.
pub fn save_varmap(
    varmap: &VarMap,
    metadata: Option<HashMap<String, String>>,
    path: impl AsRef<Path>,
) -> Result<()> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| Error::Input("VarMap mutex poisoned".into()))?;
    let tensors: Vec<(&str, &Tensor)> = data
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_tensor()))
        .collect();
    save_safetensors(tensors, metadata, path)
}
