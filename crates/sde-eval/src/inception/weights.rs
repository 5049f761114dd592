//! Inception weight files: pytorch-fid's released `.pth` (zip or legacy serialisation,
//! through score-nets' strict `torch.save` reader) and the compact safetensors layout of the
//! test vectors.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::{file_err, Result};

/// A state dict: `state_dict` names → tensors (host), as pytorch-fid's `FID_WEIGHTS_URL`
/// file holds them (`Conv2d_1a_3x3.conv.weight`, `Mixed_5b.branch1x1.bn.running_var`,
/// `fc.weight`, …).
pub type StateDict = HashMap<String, Tensor>;

/// Reads a `torch.save(state_dict)` file in either serialisation (pytorch-fid's
/// `pt_inception-2015-12-05-6726825d.pth`).
pub fn load_pth(path: impl AsRef<Path>) -> Result<StateDict> {
    let (t, _) = score_nets::checkpoint::load_torch_state_dict(path)?;
    Ok(t)
}

/// Reads the compact safetensors layout of `testvectors/fid/inception_random_compact.safetensors`
/// and expands it to the full state dict.
///
/// Every weight `K` of rank ≥ 2 is stored as `K.shape` (int64), `K.step` (one float32) and
/// integer codes, and is `codes × step` in float32 exactly: conv weights as `K.codes_2bit`
/// (uint8, four 2-bit fields per byte, code i in bits 2(i mod 4)..2(i mod 4)+1 of byte ⌊i/4⌋,
/// field = code + 1, so fields 0, 1, 2 are codes −1, 0, 1), `fc.weight` as `K.codes_i8`.
/// Every other entry is stored as itself.
pub fn load_compact(path: impl AsRef<Path>) -> Result<StateDict> {
    let path = path.as_ref();
    let raw = read_raw_safetensors(path)?;
    let mut out = StateDict::new();
    let (raw, raw_i8) = raw;
    for name in raw_i8.keys() {
        let base = name.strip_suffix(".codes_i8").unwrap_or(name);
        if !raw.contains_key(&format!("{base}.shape")) {
            return Err(file_err(path, format!("`{name}` without `{base}.shape`")));
        }
    }
    let mut names: Vec<&String> = raw.keys().collect();
    names.sort();
    for name in names {
        let t = &raw[name];
        if let Some(base) = name.strip_suffix(".shape") {
            let shape: Vec<usize> = t
                .to_dtype(DType::I64)?
                .to_vec1::<i64>()?
                .into_iter()
                .map(|s| {
                    usize::try_from(s)
                        .map_err(|_| file_err(path, format!("`{name}`: negative dimension")))
                })
                .collect::<Result<_>>()?;
            let step = raw
                .get(&format!("{base}.step"))
                .ok_or_else(|| file_err(path, format!("`{base}.step` missing")))?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let [step] = step[..] else {
                return Err(file_err(path, format!("`{base}.step` must hold one value")));
            };
            let numel: usize = shape.iter().product();
            let codes: Vec<f32> = if let Some(c) = raw.get(&format!("{base}.codes_2bit")) {
                let bytes = c.to_vec1::<u8>()?;
                if bytes.len() != numel.div_ceil(4) {
                    return Err(file_err(
                        path,
                        format!(
                            "`{base}.codes_2bit` has {} bytes, {numel} codes need {}",
                            bytes.len(),
                            numel.div_ceil(4)
                        ),
                    ));
                }
                let mut v = Vec::with_capacity(numel);
                for i in 0..numel {
                    let field = (bytes[i / 4] >> (2 * (i % 4))) & 0b11;
                    if field > 2 {
                        return Err(file_err(
                            path,
                            format!("`{base}.codes_2bit`: field 3 at code {i}"),
                        ));
                    }
                    v.push(field as f32 - 1.0);
                }
                v
            } else if let Some(c) = raw_i8.get(&format!("{base}.codes_i8")) {
                let v: Vec<f32> = c.iter().map(|&b| b as f32).collect();
                if v.len() != numel {
                    return Err(file_err(
                        path,
                        format!(
                            "`{base}.codes_i8` has {} codes, shape needs {numel}",
                            v.len()
                        ),
                    ));
                }
                v
            } else {
                return Err(file_err(path, format!("no codes for `{base}`")));
            };
            // codes × step in float32, exactly as the weights were drawn.
            let w: Vec<f32> = codes.into_iter().map(|c| c * step).collect();
            out.insert(base.to_string(), Tensor::from_vec(w, shape, &Device::Cpu)?);
        } else if name.ends_with(".step") || name.ends_with(".codes_2bit") {
            // Consumed with their `.shape` entry.
            let base = name.rsplit_once('.').map(|(b, _)| b).unwrap_or(name);
            if !raw.contains_key(&format!("{base}.shape")) {
                return Err(file_err(path, format!("`{name}` without `{base}.shape`")));
            }
        } else {
            out.insert(name.clone(), t.clone());
        }
    }
    Ok(out)
}

/// The tensors of a safetensors file: candle tensors for the dtypes candle reads, and the
/// int8 entries as raw codes (candle has no int8 dtype).
#[allow(clippy::type_complexity)]
fn read_raw_safetensors(
    path: &Path,
) -> Result<(HashMap<String, Tensor>, HashMap<String, Vec<i8>>)> {
    use safetensors::Dtype as St;
    let bytes = std::fs::read(path).map_err(|e| file_err(path, e.to_string()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| file_err(path, format!("not a readable safetensors file: {e:?}")))?;
    let mut tensors = HashMap::new();
    let mut int8 = HashMap::new();
    for (name, view) in st.tensors() {
        let dtype = match view.dtype() {
            St::I8 => {
                int8.insert(name, view.data().iter().map(|&b| b as i8).collect());
                continue;
            }
            St::F32 => DType::F32,
            St::F64 => DType::F64,
            St::I64 => DType::I64,
            St::U8 => DType::U8,
            St::U32 => DType::U32,
            St::F16 => DType::F16,
            St::BF16 => DType::BF16,
            other => {
                return Err(file_err(
                    path,
                    format!("`{name}`: unsupported dtype {other:?}"),
                ))
            }
        };
        let t = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), &Device::Cpu)?;
        tensors.insert(name, t);
    }
    Ok((tensors, int8))
}

/// sha256 of a file, lower-case hex (for `summary.json`: the weight file and the checkpoint).
pub fn sha256_file(path: impl AsRef<Path>) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let path = path.as_ref();
    let mut f = std::fs::File::open(path).map_err(|e| file_err(path, e.to_string()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| file_err(path, e.to_string()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
