//! pytorch-fid parity of the FID Inception-v3 on `testvectors/fid/` (random weights with the
//! released file's exact keys; outputs produced by pytorch-fid 0.3.0's own code).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use sde_eval::inception::{load_compact, load_pth, StateDict, NUM_WEIGHTS};
use sde_eval::{Error, FidInceptionV3};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testvectors/fid/");

fn path(name: &str) -> String {
    format!("{DIR}{name}")
}

fn vectors() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path("fid.safetensors"), &Device::Cpu).unwrap()
}

fn compact() -> StateDict {
    load_compact(path("inception_random_compact.safetensors")).unwrap()
}

fn host(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

/// Every element within `rel` of the reference's largest magnitude (‖got − want‖∞ ≤
/// rel · ‖want‖∞): values near zero, e.g. channel means of mostly-dead ReLUs, are compared on
/// the scale of the tensor, where float32 rounding of PyTorch's own kernels lives.
fn assert_close(what: &str, got: &Tensor, want: &Tensor, rel: f64) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let (g, w) = (host(got), host(want));
    let scale = w.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let worst = g
        .iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs() / scale)
        .fold(0.0f64, f64::max);
    let rms = (g.iter().zip(&w).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / g.len() as f64).sqrt()
        / scale;
    eprintln!("{what}: max error {worst:.2e}, rms error {rms:.2e} of scale {scale:.3}");
    assert!(
        worst <= rel,
        "{what}: worst relative error {worst:e} > {rel:e} (scale {scale})"
    );
}

#[test]
fn pth_subsets_equal_the_compact_weights() {
    let full = compact();
    assert_eq!(full.len(), NUM_WEIGHTS);
    let zip = load_pth(path("pt_inception_subset.zip.pth")).unwrap();
    let legacy = load_pth(path("pt_inception_subset.legacy.pth")).unwrap();
    assert_eq!(zip.len(), legacy.len());
    let prefixes = ["Conv2d_1a", "Conv2d_2a", "Conv2d_2b", "Mixed_5b."];
    let want = full
        .keys()
        .filter(|k| prefixes.iter().any(|p| k.starts_with(p)))
        .count();
    assert_eq!(zip.len(), want);
    for (name, z) in &zip {
        let l = &legacy[name];
        let c = &full[name];
        for (other, label) in [(l, "legacy"), (c, "compact")] {
            assert_eq!(z.dtype(), other.dtype(), "{name} dtype vs {label}");
            assert_eq!(z.dims(), other.dims(), "{name} shape vs {label}");
            // Bit-identical.
            let (a, b): (Vec<u64>, Vec<u64>) = match z.dtype() {
                DType::I64 => (
                    z.flatten_all()
                        .unwrap()
                        .to_vec1::<i64>()
                        .unwrap()
                        .iter()
                        .map(|v| *v as u64)
                        .collect(),
                    other
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<i64>()
                        .unwrap()
                        .iter()
                        .map(|v| *v as u64)
                        .collect(),
                ),
                _ => (
                    z.flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                        .iter()
                        .map(|v| v.to_bits() as u64)
                        .collect(),
                    other
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                        .iter()
                        .map(|v| v.to_bits() as u64)
                        .collect(),
                ),
            };
            // Bit-identical between the two .pth formats; against the compact file equal as
            // values (its zero codes decode to +0.0 where the .pth files hold −0.0).
            let same = |x: &u64, y: &u64| {
                if label == "legacy" || z.dtype() == DType::I64 {
                    x == y
                } else {
                    f32::from_bits(*x as u32) == f32::from_bits(*y as u32)
                }
            };
            let nd = a.iter().zip(&b).filter(|(x, y)| !same(x, y)).count();
            let first = a.iter().zip(&b).position(|(x, y)| !same(x, y));
            assert!(
                nd == 0,
                "{name}: {nd} values differ from {label}, first at {first:?}: {:?}",
                first.map(|i| (f32::from_bits(a[i] as u32), f32::from_bits(b[i] as u32)))
            );
        }
    }
    // The subset alone is not a network: every missing entry is named.
    let err = FidInceptionV3::from_state_dict(&zip, &Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    // A foreign extra entry is refused, as load_state_dict(strict=True) does.
    let mut extra = full.clone();
    extra.insert(
        "AuxLogits.fc.bias".into(),
        Tensor::zeros(1000, DType::F32, &Device::Cpu).unwrap(),
    );
    let err = FidInceptionV3::from_state_dict(&extra, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("AuxLogits.fc.bias"), "{err}");
    // A truncated or foreign file is an error, not a panic.
    let bytes = std::fs::read(path("pt_inception_subset.legacy.pth")).unwrap();
    let dir = std::env::temp_dir().join(format!("sde_eval_pth_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (i, cut) in [10usize, 2000, bytes.len() - 100].into_iter().enumerate() {
        let p = dir.join(format!("cut{i}.pth"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        assert!(load_pth(&p).is_err(), "cut at {cut}");
    }
    let p = dir.join("garbage.pth");
    std::fs::write(&p, b"not a checkpoint").unwrap();
    assert!(load_pth(&p).is_err());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn preprocessing_matches_pytorch_fid() {
    // F.interpolate(x32[:1], size=(299, 299), mode='bilinear', align_corners=False) * 2 - 1.
    let v = vectors();
    let net = FidInceptionV3::from_state_dict(&compact(), &Device::Cpu).unwrap();
    let x = v["x32"].narrow(0, 0, 1).unwrap();
    let got = net.preprocess(&x).unwrap();
    assert_close(
        "x32_resized_normalized",
        &got,
        &v["x32_resized_normalized"],
        1e-5,
    );
    // Bad input.
    let gray = Tensor::zeros((1, 1, 8, 8), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(
        net.forward(&gray),
        Err(Error::ShapeMismatch { .. })
    ));
    let nan = Tensor::full(f32::NAN, (1, 3, 8, 8), &Device::Cpu).unwrap();
    assert!(matches!(net.forward(&nan), Err(Error::NonFinite { .. })));
}

fn check_forward(input: &str, rows: usize) {
    let v = vectors();
    let net = FidInceptionV3::from_state_dict(&compact(), &Device::Cpu).unwrap();
    let x = v[input].narrow(0, 0, rows).unwrap();
    let out = net.forward(&x).unwrap();
    for (i, b) in out.blocks.iter().enumerate() {
        let shape: Vec<usize> = v[&format!("{input}.block{i}.shape")]
            .to_vec1::<i64>()
            .unwrap()
            .iter()
            .map(|s| *s as usize)
            .collect();
        assert_eq!(&b.dims()[1..], &shape[1..], "block {i} shape");
        let mean = b.mean(3).unwrap().mean(2).unwrap();
        let want = v[&format!("{input}.block{i}.channel_mean")]
            .narrow(0, 0, rows)
            .unwrap();
        assert_close(
            &format!("{input} block {i} channel means"),
            &mean,
            &want,
            1e-4,
        );
    }
    let want = v[&format!("{input}.pool3")].narrow(0, 0, rows).unwrap();
    assert_close(&format!("{input} pool3"), &out.pool3, &want, 2e-4);
    let want = v[&format!("{input}.logits")].narrow(0, 0, rows).unwrap();
    assert_close(&format!("{input} logits"), &out.logits, &want, 1e-4);
}

/// All inputs: the 4 × 32×32 batch and the 299×299 image (about 15 s in the test profile on
/// this machine, so in the default suite). Errors grow smoothly with depth, as float32
/// rounding does (rms 1e-7 of scale at block 0/1, 3e-6 at block 2, 2e-5 at pool3); the worst
/// pool3 element is 1.3e-4 of the scale, hence 2e-4 there.
#[test]
fn forward_matches_pytorch_fid() {
    check_forward("x32", 4);
    check_forward("x299", 1);
}
