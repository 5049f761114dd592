//! Byte-reproducible files: the same content gives the same bytes in every process.

/// Rewrites a serialised safetensors file so that its JSON header lists its keys in sorted
/// order, and returns it; the tensor data is untouched.
///
/// The `safetensors` crate takes the header metadata as a `HashMap`, whose iteration order is
/// random per process, so two processes that save the same tensors and metadata write
/// different bytes (and sha256s). Sorting the keys makes a file a function of its content.
/// The sorted header has the same length as the original (the same entries, reordered), so
/// the 8-byte alignment padding and every data offset stay valid. Input that does not parse as
/// a safetensors header is returned unchanged (the reader reports it).
pub fn canonical_safetensors(mut bytes: Vec<u8>) -> Vec<u8> {
    use std::collections::BTreeMap;
    let Some(len) = bytes.get(..8).map(|b| {
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        u64::from_le_bytes(a) as usize
    }) else {
        return bytes;
    };
    let Some(header) = bytes.get(8..8usize.saturating_add(len)) else {
        return bytes;
    };
    let text = match std::str::from_utf8(header) {
        Ok(t) => t.trim_end_matches(' '),
        Err(_) => return bytes,
    };
    let Ok(map) = serde_json::from_str::<BTreeMap<String, serde_json::Value>>(text) else {
        return bytes;
    };
    // Nested objects (`__metadata__`, each tensor's entry) sorted too.
    fn sorted(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let b: BTreeMap<String, serde_json::Value> =
                    m.into_iter().map(|(k, v)| (k, sorted(v))).collect();
                serde_json::to_value(b).unwrap_or(serde_json::Value::Null)
            }
            other => other,
        }
    }
    let map: BTreeMap<String, serde_json::Value> =
        map.into_iter().map(|(k, v)| (k, sorted(v))).collect();
    let Ok(out) = serde_json::to_string(&map) else {
        return bytes;
    };
    if out.len() != text.len() {
        return bytes;
    }
    bytes[8..8 + out.len()].copy_from_slice(out.as_bytes());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str) -> Vec<u8> {
        let mut h = header.to_string();
        while h.len() % 8 != 0 {
            h.push(' ');
        }
        let mut b = (h.len() as u64).to_le_bytes().to_vec();
        b.extend(h.as_bytes());
        b.extend([1u8, 2, 3, 4]);
        b
    }

    #[test]
    fn reordered_headers_give_the_same_bytes() {
        let a = file(
            r#"{"__metadata__":{"z":"1","a":"2"},"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#,
        );
        let b = file(
            r#"{"w":{"shape":[4],"dtype":"U8","data_offsets":[0,4]},"__metadata__":{"a":"2","z":"1"}}"#,
        );
        assert_ne!(a, b);
        let (ca, cb) = (canonical_safetensors(a.clone()), canonical_safetensors(b));
        assert_eq!(ca, cb);
        assert_eq!(ca.len(), a.len());
        assert_eq!(&ca[ca.len() - 4..], &[1, 2, 3, 4]);
    }

    #[test]
    fn garbage_is_returned_unchanged() {
        for g in [vec![], vec![1, 2, 3], file("not json"), vec![255; 16]] {
            assert_eq!(canonical_safetensors(g.clone()), g);
        }
    }
}
