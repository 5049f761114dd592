//! Damaged weight files never panic: random truncations and byte flips of a real safetensors
//! file and of the pickle inside the reference `.pth` (re-zipped with valid checksums, so the
//! unpickler itself sees the damage) give `Ok` or `Error::Checkpoint`.

use std::io::{Cursor, Read, Write};
use std::path::PathBuf;

use proptest::prelude::*;
use score_nets::checkpoint::{load_reference_checkpoint, CheckpointWeights, StrictWeights};
use score_nets::Error;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testvectors/");

fn tv(name: &str) -> PathBuf {
    PathBuf::from(DIR).join(name)
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("score-nets-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// The reference checkpoint with its `data.pkl` replaced by `pkl` (stored, fresh CRC).
fn rezip(pkl: &[u8]) -> Vec<u8> {
    let bytes = std::fs::read(tv("ckpt_ncsnpp_ve.pth")).unwrap();
    let mut src = zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
    let mut out = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for i in 0..src.len() {
        let f = src.by_index_raw(i).unwrap();
        let fname = f.name().unwrap().to_string();
        if fname.ends_with("data.pkl") {
            let name = fname;
            drop(f);
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Stored);
            out.start_file(name, opts).unwrap();
            out.write_all(pkl).unwrap();
        } else {
            out.raw_copy_file(f).unwrap();
        }
    }
    out.finish().unwrap().into_inner()
}

fn original_pkl() -> Vec<u8> {
    let bytes = std::fs::read(tv("ckpt_ncsnpp_ve.pth")).unwrap();
    let mut z = zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
    let name = z
        .file_names()
        .map(|n| n.unwrap().to_string())
        .find(|n| n.ends_with("data.pkl"))
        .unwrap();
    let mut pkl = Vec::new();
    z.by_name(&name).unwrap().read_to_end(&mut pkl).unwrap();
    pkl
}

fn trainable() -> Vec<String> {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tv("net_ncsnpp_ve.json")).unwrap()).unwrap();
    json["parameter_order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .filter(|n| n != "all_modules.0.W")
        .collect()
}

#[test]
fn rezipped_original_still_loads() {
    let path = tmp("same.pth");
    std::fs::write(&path, rezip(&original_pkl())).unwrap();
    let ck = load_reference_checkpoint(&path, CheckpointWeights::Ema, &trainable()).unwrap();
    assert_eq!(ck.tensors.len(), 226);
    assert_eq!(ck.step, Some(7));
    std::fs::remove_file(&path).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn damaged_pickle_is_an_error_or_loads(
        cut in 0.0f64..1.0,
        flips in proptest::collection::vec((0.0f64..1.0, any::<u8>()), 0..6),
        truncate in any::<bool>(),
    ) {
        let mut pkl = original_pkl();
        for (pos, v) in flips {
            let i = ((pkl.len() - 1) as f64 * pos) as usize;
            pkl[i] = v;
        }
        if truncate {
            pkl.truncate((pkl.len() as f64 * cut) as usize);
        }
        let path = tmp("fuzz.pth");
        std::fs::write(&path, rezip(&pkl)).unwrap();
        for which in [CheckpointWeights::Model, CheckpointWeights::Ema] {
            match load_reference_checkpoint(&path, which, &trainable()) {
                Ok(_) | Err(Error::Checkpoint { .. }) => {}
                Err(e) => prop_assert!(false, "unexpected error kind: {e}"),
            }
        }
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn damaged_safetensors_is_an_error_or_loads(
        cut in 0.0f64..1.0,
        flips in proptest::collection::vec((0.0f64..1.0, any::<u8>()), 0..6),
        truncate in any::<bool>(),
    ) {
        let mut bytes = std::fs::read(tv("ckpt_ncsnpp_ve.expected.safetensors")).unwrap();
        // Damage mostly the header (the first ~1 kB), where the structure is.
        for (pos, v) in flips {
            let i = ((bytes.len().min(1200) - 1) as f64 * pos) as usize;
            bytes[i] = v;
        }
        if truncate {
            bytes.truncate((bytes.len() as f64 * cut) as usize);
        }
        let path = tmp("fuzz.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        match StrictWeights::from_safetensors(&path) {
            Ok(_) | Err(Error::Checkpoint { .. }) => {}
            Err(e) => prop_assert!(false, "unexpected error kind: {e}"),
        }
        std::fs::remove_file(&path).unwrap();
    }
}
