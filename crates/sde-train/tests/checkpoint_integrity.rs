//! Checkpoint integrity: every metadata entry (step, RNG state, Adam step, EMA decay and update
//! count, config, format) and every tensor's name is under the checksum, so a file whose header
//! was edited is refused; format-1 files are a typed "unsupported version" error; temporary
//! files of a write killed mid-way are removed on start.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use score_nets::{init::seeded_var_builder, Mlp, MlpConfig};
use sde_core::VpSde;
use sde_train::{
    load_checkpoint, remove_stale_temp_files, save_checkpoint, Checkpoint, Error, RngState,
    SdeLoss, SdeLossOptions, TrainConfig, Trainer, CHECKPOINT_FORMAT,
};

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sde-train-integrity-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn small_checkpoint() -> Checkpoint {
    let dev = Device::Cpu;
    let t = |v: &[f32]| Tensor::new(v, &dev).unwrap();
    let list = |a: f32| {
        vec![
            ("w".to_string(), t(&[a, a + 1.0, a + 2.0])),
            ("b".to_string(), t(&[a * 2.0])),
        ]
    };
    Checkpoint {
        step: 120,
        model: list(1.0),
        ema: list(1.5),
        ema_decay: 0.999,
        ema_num_updates: Some(120),
        adam_step: 120,
        adam_m: list(0.1),
        adam_v: list(0.01),
        rng: RngState {
            seed: [7; 32],
            stream: 3,
            word_pos: 4096,
        },
        config: serde_json::json!({ "seed": 42, "optim": { "lr": 2e-4 } }),
    }
}

/// The safetensors header of `bytes` as JSON, and the data after it.
fn split(bytes: &[u8]) -> (serde_json::Map<String, serde_json::Value>, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header.as_object().unwrap().clone(), bytes[8 + n..].to_vec())
}

/// A file with the header `header` (padded to 8 bytes, as safetensors writes it) and `data`.
fn join(header: &serde_json::Map<String, serde_json::Value>, data: &[u8]) -> Vec<u8> {
    let mut h = serde_json::to_vec(header).unwrap();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend_from_slice(data);
    out
}

fn metadata(
    header: &mut serde_json::Map<String, serde_json::Value>,
) -> &mut serde_json::Map<String, serde_json::Value> {
    header
        .get_mut("__metadata__")
        .and_then(|m| m.as_object_mut())
        .unwrap()
}

#[test]
fn every_metadata_field_is_under_the_checksum() {
    let dir = tmpdir("fields");
    let good = dir.join("good.safetensors");
    let ckpt = small_checkpoint();
    save_checkpoint(&good, &ckpt).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let (header, data) = split(&bytes);

    // The editing itself changes nothing: the re-joined, unedited file loads to the same state.
    let same = dir.join("same.safetensors");
    std::fs::write(&same, join(&header, &data)).unwrap();
    let back = load_checkpoint(&same).unwrap();
    assert_eq!(
        (back.step, back.adam_step, back.ema_num_updates, back.rng),
        (ckpt.step, ckpt.adam_step, ckpt.ema_num_updates, ckpt.rng)
    );
    assert_eq!(
        (back.ema_decay, &back.config),
        (ckpt.ema_decay, &ckpt.config)
    );
    let meta: BTreeMap<String, String> = metadata(&mut header.clone())
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    assert_eq!(meta["format"], CHECKPOINT_FORMAT);

    // Each field edited to another value that still parses: refused by the checksum.
    let edits: Vec<(&str, String)> = vec![
        ("step", "119".into()),
        ("adam_step", "121".into()),
        ("ema_decay", "0.99".into()),
        ("ema_num_updates", "none".into()),
        ("rng_seed", "08".repeat(32)),
        ("rng_stream", "4".into()),
        ("rng_word_pos", "0".into()),
        ("config", r#"{"seed":43,"optim":{"lr":0.0002}}"#.into()),
        ("added_key", "1".into()),
    ];
    for (key, value) in &edits {
        assert!(
            key == &"added_key" || meta[*key] != *value,
            "{key}: not an edit"
        );
        let mut h = header.clone();
        metadata(&mut h).insert(key.to_string(), serde_json::Value::String(value.clone()));
        let p = dir.join(format!("edited_{key}.safetensors"));
        std::fs::write(&p, join(&h, &data)).unwrap();
        match load_checkpoint(&p) {
            Err(Error::CorruptCheckpoint { reason, .. }) => {
                assert!(reason.contains("checksum mismatch"), "{key}: {reason}")
            }
            other => panic!("edited {key}: expected CorruptCheckpoint, got {other:?}"),
        }
    }
    // A removed field: refused too (by the checksum, before the missing key is noticed).
    for key in ["step", "rng_seed", "config"] {
        let mut h = header.clone();
        metadata(&mut h).remove(key);
        let p = dir.join(format!("removed_{key}.safetensors"));
        std::fs::write(&p, join(&h, &data)).unwrap();
        assert!(
            matches!(load_checkpoint(&p), Err(Error::CorruptCheckpoint { .. })),
            "removed {key}"
        );
    }
    // Two tensors' names swapped (model and EMA weights trade places): refused.
    let mut h = header.clone();
    let (a, b) = (h.remove("model/w").unwrap(), h.remove("ema/w").unwrap());
    h.insert("model/w".into(), b);
    h.insert("ema/w".into(), a);
    let p = dir.join("swapped.safetensors");
    std::fs::write(&p, join(&h, &data)).unwrap();
    assert!(matches!(
        load_checkpoint(&p),
        Err(Error::CorruptCheckpoint { .. })
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn another_format_version_is_a_typed_error() {
    let dir = tmpdir("version");
    let good = dir.join("good.safetensors");
    save_checkpoint(&good, &small_checkpoint()).unwrap();
    let (mut header, data) = split(&std::fs::read(&good).unwrap());
    metadata(&mut header).insert(
        "format".into(),
        serde_json::Value::String("sde-train-checkpoint/1".into()),
    );
    let p = dir.join("v1.safetensors");
    std::fs::write(&p, join(&header, &data)).unwrap();
    match load_checkpoint(&p) {
        Err(e @ Error::UnsupportedCheckpointVersion { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("sde-train-checkpoint/1") && msg.contains(CHECKPOINT_FORMAT),
                "{msg}"
            );
        }
        other => panic!("expected UnsupportedCheckpointVersion, got {other:?}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// pid_max on Linux is at most 2^22: this pid never runs.
const DEAD_PID: u32 = 4_000_000_000;

#[test]
fn stale_temporary_files_are_removed_and_nothing_else() {
    let dir = tmpdir("stale");
    let write = |name: &str| {
        std::fs::write(dir.join(name), b"partial").unwrap();
        dir.join(name)
    };
    let stale = write(&format!(".checkpoint_10.safetensors.tmp-{DEAD_PID}"));
    let stale2 = write(&format!(".samples.png.tmp-{}", DEAD_PID + 1));
    let mine = write(&format!(
        ".checkpoint_20.safetensors.tmp-{}",
        std::process::id()
    ));
    let kept = [
        write("checkpoint_10.safetensors"),
        write("notes.tmp"),
        write(".x.tmp-abc"),
        write(".tmp-123"),
        mine.clone(),
    ];
    let removed = remove_stale_temp_files(&dir).unwrap();
    let mut want = vec![stale.clone(), stale2.clone()];
    want.sort();
    assert_eq!(removed, want);
    assert!(!stale.exists() && !stale2.exists());
    for k in &kept {
        assert!(k.exists(), "{k:?} must be kept");
    }
    // Nothing to do the second time, and a missing directory is not an error.
    assert!(remove_stale_temp_files(&dir).unwrap().is_empty());
    assert!(remove_stale_temp_files(dir.join("absent"))
        .unwrap()
        .is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_trainer_cleans_its_checkpoint_dir_on_start() {
    let dir = tmpdir("trainer");
    // The 86 MB of a killed write, in miniature.
    let stale = dir.join(format!(".checkpoint_5.safetensors.tmp-{DEAD_PID}"));
    std::fs::write(&stale, vec![0u8; 4096]).unwrap();
    let vm = VarMap::new();
    let cfg = MlpConfig {
        hidden: 8,
        n_layers: 1,
        embedding_dim: 4,
        ..MlpConfig::vp(2)
    };
    let net = Mlp::new(&cfg, seeded_var_builder(&vm, 1, DType::F32, &Device::Cpu)).unwrap();
    let loss = SdeLoss::new(VpSde::default(), SdeLossOptions::default()).unwrap();
    let config = TrainConfig {
        n_iters: 1,
        progress: false,
        ..Default::default()
    };
    let _trainer = Trainer::new(&net, &vm, loss, config)
        .unwrap()
        .with_checkpoint_dir(&dir)
        .unwrap();
    assert!(
        !stale.exists(),
        "the stale temporary file survived the start"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same training state gives the same bytes however often it is saved: the header's
/// metadata map (random iteration order per map, and per process) is written sorted. Ten
/// saves of eleven metadata keys in random order would collide by chance with probability
/// ~(1/11!)⁹.
#[test]
fn the_same_state_saves_to_the_same_bytes() {
    let dir = tmpdir("same-bytes");
    let ckpt = small_checkpoint();
    let first = dir.join("a.safetensors");
    save_checkpoint(&first, &ckpt).unwrap();
    let want = std::fs::read(&first).unwrap();
    for i in 0..10 {
        let p = dir.join(format!("b{i}.safetensors"));
        save_checkpoint(&p, &ckpt).unwrap();
        assert_eq!(
            std::fs::read(&p).unwrap(),
            want,
            "save {i} wrote other bytes"
        );
    }
    // And it still loads and verifies.
    assert_eq!(load_checkpoint(&first).unwrap().step, 120);
    let _ = std::fs::remove_dir_all(&dir);
}
