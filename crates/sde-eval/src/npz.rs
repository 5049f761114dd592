//! Reading `.npz` archives whose entries may be deflated (`np.savez_compressed`, which
//! pytorch-fid's `--save-stats` uses): candle reads only stored entries.

use std::io::Read;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::{file_err, Result};

/// Every array of an `.npz` file (name without `.npy`), little-endian `f4`/`f8`/`i4`/`i8`,
/// C order. Anything else is an error naming the entry.
pub(crate) fn read_npz(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let f = std::fs::File::open(path).map_err(|e| file_err(path, e.to_string()))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(f))
        .map_err(|e| file_err(path, format!("not a zip (.npz) archive: {e}")))?;
    let mut out = Vec::new();
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index_raw(i)
            .map_err(|e| file_err(path, format!("entry {i}: {e}")))?;
        let name = entry
            .name()
            .map_err(|e| file_err(path, format!("entry {i}: bad name: {e}")))?
            .to_string();
        let mut raw = Vec::new();
        entry
            .read_to_end(&mut raw)
            .map_err(|e| file_err(path, format!("`{name}`: {e}")))?;
        let bytes = match entry.compression() {
            zip::CompressionMethod::Stored => raw,
            // `DEFLATE` is `Unsupported(8)` without zip's deflate feature: inflated here.
            m if m == zip::CompressionMethod::DEFLATE => {
                let mut d = Vec::new();
                flate2::read::DeflateDecoder::new(raw.as_slice())
                    .read_to_end(&mut d)
                    .map_err(|e| file_err(path, format!("`{name}`: corrupt deflate data: {e}")))?;
                d
            }
            other => {
                return Err(file_err(
                    path,
                    format!("`{name}`: unsupported compression {other:?}"),
                ))
            }
        };
        let key = name.strip_suffix(".npy").unwrap_or(&name).to_string();
        let t = parse_npy(&bytes).map_err(|r| file_err(path, format!("`{name}`: {r}")))?;
        out.push((key, t));
    }
    Ok(out)
}

/// One `.npy` array (format versions 1–3).
fn parse_npy(b: &[u8]) -> std::result::Result<Tensor, String> {
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err("not an .npy array (bad magic)".into());
    }
    let (hlen, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 if b.len() >= 12 => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = b
        .get(start..start + hlen)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or("truncated or non-UTF-8 .npy header")?;
    let field = |key: &str| -> Option<&str> {
        let i = header.find(&format!("'{key}'"))? + key.len() + 2;
        Some(header[i..].trim_start().strip_prefix(':')?.trim_start())
    };
    let descr = field("descr").ok_or("no `descr` in the .npy header")?;
    let descr = descr.get(1..4).ok_or("malformed `descr`")?;
    let dtype = match descr {
        "<f4" => DType::F32,
        "<f8" => DType::F64,
        "<i8" => DType::I64,
        other => {
            return Err(format!(
                "unsupported dtype `{other}` (expected <f4, <f8 or <i8)"
            ))
        }
    };
    if field("fortran_order").is_some_and(|f| f.starts_with("True")) {
        return Err("Fortran-order arrays are not supported".into());
    }
    let shape_s = field("shape").ok_or("no `shape` in the .npy header")?;
    let close = shape_s.find(')').ok_or("malformed `shape`")?;
    let shape: Vec<usize> = shape_s[1..close]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("bad dimension `{s}`"))
        })
        .collect::<std::result::Result<_, _>>()?;
    let numel = shape
        .iter()
        .try_fold(1usize, |a, &s| a.checked_mul(s))
        .ok_or("shape overflows")?;
    let data = &b[start + hlen..];
    let need = numel * dtype.size_in_bytes();
    if data.len() != need {
        return Err(format!(
            "{} data bytes, shape {shape:?} needs {need}",
            data.len()
        ));
    }
    Tensor::from_raw_buffer(data, dtype, &shape, &Device::Cpu).map_err(|e| e.to_string())
}
