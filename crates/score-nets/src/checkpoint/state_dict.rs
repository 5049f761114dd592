//! Bare `torch.save(state_dict)` files, in torch's zip serialisation and in the legacy
//! (pre-1.6) one, e.g. pytorch-fid's Inception weights `pt_inception-2015-12-05-*.pth`.

use std::collections::HashMap;
use std::io::Cursor;
use std::path::Path;

use candle_core::pickle::{Object, Stack};
use candle_core::Tensor;

use super::torch::{ckpt_err, TensorRef, TorchZip};
use crate::error::Result;

/// The serialisation a `torch.save` file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TorchFormat {
    /// The zip archive of PyTorch ≥ 1.6 (`data.pkl` + `data/<key>` storages).
    Zip,
    /// The legacy stream: magic number, protocol version and system-info pickles, the object
    /// pickle, the sorted storage-key list, then each storage as an int64 element count and
    /// its raw little-endian bytes.
    Legacy,
}

/// Loads a `torch.save` of a dict (or `OrderedDict`) name → tensor in either serialisation,
/// returning the tensors with the dtypes PyTorch stored (on the CPU) and the format found.
///
/// A `_metadata` entry is skipped; any other non-tensor value, a missing or truncated
/// storage, or a file that is neither format is [`crate::Error::Checkpoint`], never a panic.
/// Both serialisations of the same dict give identical tensors.
pub fn load_torch_state_dict(
    path: impl AsRef<Path>,
) -> Result<(HashMap<String, Tensor>, TorchFormat)> {
    let path = path.as_ref();
    let head = {
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(|e| ckpt_err(path, e.to_string()))?;
        let mut b = [0u8; 2];
        let n = f.read(&mut b).map_err(|e| ckpt_err(path, e.to_string()))?;
        b[..n].to_vec()
    };
    if head.first() == Some(&0x80) {
        return Ok((load_legacy(path)?, TorchFormat::Legacy));
    }
    let mut archive = TorchZip::open(path)?;
    let root = archive.root_object()?;
    let entries = dict_entries(path, root)?;
    let mut tensors = HashMap::new();
    for (name, v) in entries {
        let t = archive
            .tensor(&v)
            .map_err(|r| ckpt_err(path, format!("entry `{name}`: {r}")))?;
        insert(path, &mut tensors, name, t)?;
    }
    Ok((tensors, TorchFormat::Zip))
}

fn insert(
    path: &Path,
    tensors: &mut HashMap<String, Tensor>,
    name: String,
    t: Tensor,
) -> Result<()> {
    if tensors.contains_key(&name) {
        return Err(ckpt_err(path, format!("entry `{name}` appears twice")));
    }
    tensors.insert(name, t);
    Ok(())
}

/// The (name, value) pairs of a pickled state dict, without `_metadata`.
fn dict_entries(path: &Path, root: Object) -> Result<Vec<(String, Object)>> {
    let Object::Dict(entries) = root else {
        return Err(ckpt_err(
            path,
            "the pickled object is not a dict of tensors (a state_dict)",
        ));
    };
    let mut out = Vec::with_capacity(entries.len());
    for (k, v) in entries {
        let Object::Unicode(name) = k else {
            return Err(ckpt_err(path, "the state dict has a non-string key"));
        };
        if name != "_metadata" {
            out.push((name, v));
        }
    }
    Ok(out)
}

/// One pickle from the current position of `cur`, through candle's unpickler (guarded: it
/// can panic on malformed input).
fn unpickle(path: &Path, cur: &mut Cursor<&[u8]>, what: &str) -> Result<Object> {
    let start = cur.position() as usize;
    let bytes = cur.get_ref();
    let rest = bytes.get(start..).unwrap_or(&[]);
    let res = std::panic::catch_unwind(|| {
        let mut c = Cursor::new(rest);
        let mut stack = Stack::empty();
        stack.read_loop(&mut c)?;
        stack.finalize().map(|o| (o, c.position()))
    });
    match res {
        Ok(Ok((obj, used))) => {
            cur.set_position(start as u64 + used);
            Ok(obj)
        }
        Ok(Err(e)) => Err(ckpt_err(path, format!("cannot unpickle the {what}: {e}"))),
        Err(_) => Err(ckpt_err(
            path,
            format!("cannot unpickle the {what}: malformed data"),
        )),
    }
}

/// The legacy stream (`torch.serialization._legacy_save`).
fn load_legacy(path: &Path) -> Result<HashMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|e| ckpt_err(path, e.to_string()))?;
    // 1. The magic number 0x1950a86a20f9469cfc6c as a protocol-2 LONG1 pickle. It is matched
    //    byte for byte: candle's unpickler overflows on a 10-byte LONG1.
    const MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
    let ok = bytes.len() >= 15
        && bytes[0] == 0x80
        && bytes[2] == 0x8a
        && bytes[3] == 10
        && bytes[4..14] == MAGIC
        && bytes[14] == b'.';
    if !ok {
        return Err(ckpt_err(
            path,
            "neither a torch.save zip archive nor a legacy torch.save stream (bad magic number)",
        ));
    }
    let mut cur = Cursor::new(bytes.as_slice());
    cur.set_position(15);
    // 2. Protocol version, 3. system info.
    let version = unpickle(path, &mut cur, "protocol version")?;
    if version.clone().int_or_long().ok() != Some(1001) {
        return Err(ckpt_err(
            path,
            format!("unsupported legacy protocol version {version:?} (expected 1001)"),
        ));
    }
    let sys_info = unpickle(path, &mut cur, "system info")?;
    if let Object::Dict(entries) = &sys_info {
        for (k, v) in entries {
            if matches!(k, Object::Unicode(k) if k == "little_endian") && *v != Object::Bool(true) {
                return Err(ckpt_err(path, "big-endian legacy files are not supported"));
            }
        }
    }
    // 4. The object, 5. the storage keys.
    let root = unpickle(path, &mut cur, "state dict")?;
    let entries = dict_entries(path, root)?;
    let keys = match unpickle(path, &mut cur, "storage key list")? {
        Object::List(keys) => keys
            .into_iter()
            .map(|k| match k {
                Object::Unicode(k) => Ok(k),
                _ => Err(ckpt_err(path, "a storage key is not a string")),
            })
            .collect::<Result<Vec<_>>>()?,
        _ => return Err(ckpt_err(path, "the storage key list is not a list")),
    };
    let mut refs = Vec::with_capacity(entries.len());
    for (name, v) in entries {
        let r = TensorRef::parse(&v).map_err(|r| ckpt_err(path, format!("entry `{name}`: {r}")))?;
        refs.push((name, r));
    }
    // 6. Each storage: int64 element count, then its bytes (element size from its dtype).
    let mut storages: HashMap<String, &[u8]> = HashMap::new();
    let mut pos = cur.position() as usize;
    for key in &keys {
        let Some((_, r)) = refs.iter().find(|(_, r)| &r.storage_key == key) else {
            return Err(ckpt_err(
                path,
                format!("storage `{key}` is used by no tensor: its element size is unknown"),
            ));
        };
        let truncated = || ckpt_err(path, format!("storage `{key}`: truncated file"));
        let head: [u8; 8] = bytes
            .get(pos..pos + 8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(truncated)?;
        let numel = u64::from_le_bytes(head) as usize;
        let len = numel
            .checked_mul(r.dtype.size_in_bytes())
            .ok_or_else(truncated)?;
        let start = pos + 8;
        let data = bytes
            .get(start..start.checked_add(len).ok_or_else(truncated)?)
            .ok_or_else(truncated)?;
        storages.insert(key.clone(), data);
        pos = start + len;
    }
    let mut tensors = HashMap::new();
    for (name, r) in refs {
        let Some(storage) = storages.get(&r.storage_key) else {
            return Err(ckpt_err(
                path,
                format!(
                    "entry `{name}`: storage `{}` is not in the file",
                    r.storage_key
                ),
            ));
        };
        let t = r
            .read(storage)
            .map_err(|e| ckpt_err(path, format!("entry `{name}`: {e}")))?;
        insert(path, &mut tensors, name, t)?;
    }
    Ok(tensors)
}
