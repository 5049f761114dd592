//! The MNIST digit classifier of `sde-eval` on the embedded MNIST-5k data: the committed
//! weights' held-out accuracy, its report on real digits (balanced shares, distances at the
//! floor), on degenerate "samples" (one class; noise), deterministic training, typed errors.

use candle_core::{DType, Device, Tensor};
use sde_eval::{
    digit_report, train_digit_classifier, DigitClassifier, DigitTrainOptions, Error,
    FeatureExtractor,
};
use sde_train::{mnist5k, Split};

#[test]
fn committed_weights_classify_held_out_digits() {
    let net = DigitClassifier::embedded(&Device::Cpu).unwrap();
    let (x, y) = mnist5k(Split::Test).unwrap();
    let acc = net.accuracy(&x, &y).unwrap();
    eprintln!("test accuracy of the committed weights: {acc:.4}");
    assert!(acc >= 0.98, "test accuracy {acc}");
    // The weights are identified by their hash, as summary.json records it.
    let sha = net.weights_sha256().unwrap();
    assert_eq!(sha.len(), 64);
    assert_eq!(FeatureExtractor::weights_sha256(&net).as_deref(), Some(sha));
    // As a feature extractor: 128 features and 10 logits per image, the same as
    // logits_and_features, batch by batch.
    let xb = x.narrow(0, 0, 7).unwrap();
    let f = net.extract(&xb).unwrap();
    let (logits, feats) = net.logits_and_features(&xb).unwrap();
    assert_eq!(f.features.dims(), &[7, 128]);
    assert_eq!(f.logits.as_ref().unwrap().dims(), &[7, 10]);
    let diff = (f.features - feats)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    let one = net
        .logits_and_features(&x.narrow(0, 3, 1).unwrap())
        .unwrap()
        .0;
    let err = (one - logits.narrow(0, 3, 1).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(err < 1e-4, "a sample's logits depend on its batch by {err}");
}

#[test]
fn report_on_real_digits_and_on_degenerate_samples() {
    let net = DigitClassifier::embedded(&Device::Cpu).unwrap();
    let (test, test_y) = mnist5k(Split::Test).unwrap();
    let (train, train_y) = mnist5k(Split::Train).unwrap();

    // The test images as "samples": shares near 10% each, mostly confident, and distances 0.
    let r = digit_report(&net, &test, &test, &train).unwrap();
    eprintln!("test vs test: {r:?}");
    assert_eq!((r.n, r.n_test, r.n_train), (1000, 1000, 4000));
    assert!((r.class_shares.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    for (d, s) in r.class_shares.iter().enumerate() {
        assert!((s - 0.1).abs() < 0.02, "digit {d}: share {s}");
    }
    assert!(r.confident_share > 0.9, "{}", r.confident_share);
    assert!(r.frechet.abs() < 1e-6 * r.frechet_floor, "{}", r.frechet);
    // Both sets whole: one KID subset (the unbiased MMD² of a set with itself is not 0: the
    // cross term keeps the diagonal k(xᵢ, xᵢ) that the within-set terms drop).
    assert_eq!((r.kid_subsets, r.kid.std), ((1000, 1), 0.0));
    assert!(r.frechet_floor > 0.0);
    assert_eq!(r.classifier_sha256.as_deref(), net.weights_sha256());

    // 1,000 other real digits (train) as samples: near the floor.
    let real = train.narrow(0, 0, 1000).unwrap();
    let r_real = digit_report(&net, &real, &test, &train).unwrap();
    eprintln!(
        "train[..1000] vs test: frechet {:.3} (floor {:.3}), kid {:.5}",
        r_real.frechet, r_real.frechet_floor, r_real.kid.mean
    );
    // The floor is taken at the samples' n (1,000 train digits, 4 chunks), so 1,000 real
    // digits sit at it: one of its chunks is exactly these.
    assert_eq!((r_real.floor_n, r_real.floor_chunks), (1000, 4));
    assert!(
        (r_real.frechet_ratio - 1.0).abs()
            < 3.0 * r_real.frechet_floor_std / r_real.frechet_floor + 0.05,
        "{} (floor {} ± {})",
        r_real.frechet_ratio,
        r_real.frechet_floor,
        r_real.frechet_floor_std
    );

    // Only ones: a collapsed "generator" is caught by the shares and by the distance.
    let ones: Vec<u32> = (0..train_y.len() as u32)
        .filter(|&i| train_y[i as usize] == 1)
        .collect();
    let idx = Tensor::from_vec(ones.clone(), ones.len(), &Device::Cpu).unwrap();
    let collapsed = train.index_select(&idx, 0).unwrap();
    let r1 = digit_report(&net, &collapsed, &test, &train).unwrap();
    assert!(r1.class_shares[1] > 0.97, "{:?}", r1.class_shares);
    assert!(r1.frechet_ratio > 10.0, "{}", r1.frechet_ratio);
    eprintln!(
        "only ones: shares {:?}, frechet ratio {:.1}, kid {:.3} (real digits {:.3}, floor {:.3})",
        r1.class_shares, r1.frechet_ratio, r1.kid.mean, r_real.kid.mean, r_real.kid_floor.mean
    );
    assert!(r1.kid.mean > 10.0 * r_real.kid.mean.abs().max(r_real.kid_floor.mean.abs()));
    // Uniform noise: far away, and not confidently any digit.
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
    let noise = sde_core::noise::NoiseSource::rand_uniform(
        &mut rng,
        &(200, 1, 28, 28).into(),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let rn = digit_report(&net, &noise, &test, &train).unwrap();
    eprintln!(
        "noise: frechet ratio {:.1}, confident {:.3}",
        rn.frechet_ratio, rn.confident_share
    );
    assert!(rn.frechet_ratio > 10.0, "{}", rn.frechet_ratio);
    // Serialisable for summary.json, with the field names the examples read.
    let json = serde_json::to_value(&r).unwrap();
    for k in [
        "n",
        "class_shares",
        "confident_share",
        "frechet",
        "frechet_floor",
        "kid",
        "kid_floor",
    ] {
        assert!(json.get(k).is_some(), "{k} missing in {json}");
    }
    let _ = test_y;
}

#[test]
fn training_lowers_the_loss_and_is_deterministic() {
    let (x, y) = mnist5k(Split::Train).unwrap();
    let (x, y) = (x.narrow(0, 0, 800).unwrap(), y[..800].to_vec());
    let opts = DigitTrainOptions {
        steps: 50,
        batch_size: 32,
        ..Default::default()
    };
    let (a, ra) = train_digit_classifier(&x, &y, &opts, 3).unwrap();
    let (b, rb) = train_digit_classifier(&x, &y, &opts, 3).unwrap();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (first, last) = (mean(&ra.losses[..10]), mean(&ra.losses[40..]));
    eprintln!(
        "loss {first:.3} -> {last:.3}; train accuracy {:.3}",
        ra.train_accuracy
    );
    assert!(last < 0.7 * first, "{first} -> {last}");
    assert!(ra.train_accuracy > 0.5, "{}", ra.train_accuracy);
    // Bit-identical: the same losses and the same weights.
    assert_eq!(
        ra.losses.iter().map(|l| l.to_bits()).collect::<Vec<_>>(),
        rb.losses.iter().map(|l| l.to_bits()).collect::<Vec<_>>()
    );
    for ((na, ta), (nb, tb)) in a.tensors().iter().zip(b.tensors().iter()) {
        assert_eq!(na, nb);
        let (va, vb) = (
            ta.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            tb.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert!(
            va.iter().zip(&vb).all(|(p, q)| p.to_bits() == q.to_bits()),
            "{na} differs"
        );
    }
    // Another seed trains another network.
    let (_, rc) = train_digit_classifier(
        &x,
        &y,
        &DigitTrainOptions {
            steps: 5,
            ..opts.clone()
        },
        4,
    )
    .unwrap();
    assert_ne!(rc.losses[0].to_bits(), ra.losses[0].to_bits());
    // Save and load round trip, strictly.
    let dir = std::env::temp_dir().join(format!("digit_cls_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("w.safetensors");
    a.save(&p, None).unwrap();
    let back = DigitClassifier::load(&p, &Device::Cpu).unwrap();
    let probe = x.narrow(0, 0, 4).unwrap();
    let (la, _) = a.logits_and_features(&probe).unwrap();
    let (lb, _) = back.logits_and_features(&probe).unwrap();
    assert_eq!(
        la.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        lb.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
    std::fs::write(&p, b"garbage").unwrap();
    assert!(matches!(
        DigitClassifier::load(&p, &Device::Cpu),
        Err(Error::File { .. })
    ));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_input_is_a_typed_error() {
    let net = DigitClassifier::embedded(&Device::Cpu).unwrap();
    let dev = Device::Cpu;
    let shape_err = |x: Tensor| {
        matches!(
            net.logits_and_features(&x),
            Err(Error::ShapeMismatch { .. })
        )
    };
    assert!(shape_err(
        Tensor::zeros((2, 3, 28, 28), DType::F32, &dev).unwrap()
    ));
    assert!(shape_err(
        Tensor::zeros((2, 1, 32, 32), DType::F32, &dev).unwrap()
    ));
    assert!(shape_err(
        Tensor::zeros((2, 784), DType::F32, &dev).unwrap()
    ));
    assert!(shape_err(
        Tensor::zeros((2, 1, 28, 28), DType::U8, &dev).unwrap()
    ));
    let nan = Tensor::full(f32::NAN, (2, 1, 28, 28), &dev).unwrap();
    assert!(matches!(
        net.logits_and_features(&nan),
        Err(Error::NonFinite { .. })
    ));
    let out_of_range = Tensor::full(1.5f32, (2, 1, 28, 28), &dev).unwrap();
    assert!(matches!(
        net.logits_and_features(&out_of_range),
        Err(Error::InvalidParameter { name: "images", .. })
    ));
    // f64 input in range is fine.
    let ok = Tensor::zeros((1, 1, 28, 28), DType::F64, &dev).unwrap();
    assert!(net.logits_and_features(&ok).is_ok());
    // Training input is checked too.
    let (x, y) = mnist5k(Split::Test).unwrap();
    let x4 = x.narrow(0, 0, 4).unwrap();
    let o = DigitTrainOptions::default();
    assert!(train_digit_classifier(&x4, &y[..3], &o, 0).is_err());
    assert!(train_digit_classifier(&x4, &[0, 1, 2, 10], &o, 0).is_err());
    assert!(train_digit_classifier(
        &x4,
        &y[..4],
        &DigitTrainOptions {
            steps: 0,
            ..o.clone()
        },
        0
    )
    .is_err());
    assert!(
        train_digit_classifier(&x4, &y[..4], &DigitTrainOptions { lr: f64::NAN, ..o }, 0).is_err()
    );
    // A report needs at least two samples.
    assert!(matches!(
        digit_report(&net, &x.narrow(0, 0, 1).unwrap(), &x, &x),
        Err(Error::NotEnoughSamples { .. })
    ));
}
