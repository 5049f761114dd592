//! Toy distributions, seeded batching, transforms, and the file parsers on files the tests write.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use sde_core::to_host_f64;
use sde_train::{
    inverse_scaler, load_cifar10, load_idx, load_image_folder, load_mnist_images,
    load_mnist_labels, random_flip, save_image_grid, scaler, uniform_dequantize, BatchSource,
    Error, ShuffledBatches, Toy2d, CIFAR10_RECORD,
};

fn rng(s: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(s)
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sde-train-data-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn toy_distributions_are_seedable_and_shaped() {
    for d in Toy2d::ALL {
        let a = d
            .sample(500, &Device::Cpu, DType::F32, &mut rng(1))
            .unwrap();
        let b = d
            .sample(500, &Device::Cpu, DType::F32, &mut rng(1))
            .unwrap();
        let c = d
            .sample(500, &Device::Cpu, DType::F32, &mut rng(2))
            .unwrap();
        assert_eq!(a.dims(), &[500, 2]);
        let (a, b, c) = (
            to_host_f64(&a).unwrap(),
            to_host_f64(&b).unwrap(),
            to_host_f64(&c).unwrap(),
        );
        assert_eq!(a, b, "{d:?}: same seed, same points");
        assert_ne!(a, c, "{d:?}");
        assert!(
            a.iter().all(|v| v.is_finite() && v.abs() < 6.0),
            "{d:?} out of range"
        );
    }
}

#[test]
fn eight_gaussians_fill_every_mode_equally() {
    let mix = Toy2d::EightGaussians.mixture().unwrap();
    let x = Toy2d::EightGaussians
        .sample(8000, &Device::Cpu, DType::F64, &mut rng(3))
        .unwrap();
    let k = mix.classify(&x).unwrap();
    let mut counts = [0usize; 8];
    for c in k {
        counts[c] += 1;
    }
    for c in counts {
        assert!((c as f64 / 8000.0 - 0.125).abs() < 0.02, "{counts:?}");
    }
    // Points lie near radius 2√2 with the stated spread.
    let v = to_host_f64(&x).unwrap();
    let mean_r: f64 = v
        .chunks(2)
        .map(|p| (p[0] * p[0] + p[1] * p[1]).sqrt())
        .sum::<f64>()
        / 8000.0;
    assert!(
        (mean_r - 2.0 * std::f64::consts::SQRT_2).abs() < 0.05,
        "{mean_r}"
    );
}

#[test]
fn checkerboard_lies_on_black_squares() {
    let x = Toy2d::Checkerboard
        .sample(2000, &Device::Cpu, DType::F64, &mut rng(4))
        .unwrap();
    for p in to_host_f64(&x).unwrap().chunks(2) {
        let (i, j) = ((p[0] / 2.0).floor() as i64, (p[1] / 2.0).floor() as i64);
        assert_eq!((i + j).rem_euclid(2), 0, "{p:?}");
        assert!(p[0].abs() <= 4.0 && p[1].abs() <= 4.0);
    }
}

#[test]
fn shuffled_batches_cover_each_epoch_once() {
    let n = 10;
    let data = Tensor::arange(0f32, n as f32, &Device::Cpu)
        .unwrap()
        .reshape((n, 1))
        .unwrap();
    let mut s = ShuffledBatches::new(data.clone(), 3, 7).unwrap();
    assert_eq!(s.batches_per_epoch(), 3);
    let mut seen = Vec::new();
    for k in 0..3 {
        seen.extend(to_host_f64(&s.batch_at(k).unwrap()).unwrap());
    }
    let mut sorted = seen.clone();
    sorted.sort_by(f64::total_cmp);
    sorted.dedup();
    assert_eq!(sorted.len(), 9, "no repeats within an epoch");
    let mut again = ShuffledBatches::new(data.clone(), 3, 7).unwrap();
    assert_eq!(
        to_host_f64(&again.batch_at(1).unwrap()).unwrap(),
        seen[3..6].to_vec()
    );
    // Iterator = batch_at(0), batch_at(1), ...; epochs differ; other seeds differ.
    let it: Vec<Vec<f64>> = ShuffledBatches::new(data.clone(), 3, 7)
        .unwrap()
        .take(6)
        .map(|b| to_host_f64(&b.unwrap()).unwrap())
        .collect();
    assert_eq!(it[0], seen[..3].to_vec());
    assert_ne!(s.permutation(0), s.permutation(1));
    assert_ne!(
        s.permutation(0),
        ShuffledBatches::new(data.clone(), 3, 8)
            .unwrap()
            .permutation(0)
    );
    assert!(matches!(
        ShuffledBatches::new(data, 11, 0),
        Err(Error::InvalidParameter { .. })
    ));
}

#[test]
fn flips_scalers_and_dequantization() {
    let x = Tensor::arange(0f32, 2.0 * 3.0 * 2.0 * 4.0, &Device::Cpu)
        .unwrap()
        .reshape((2, 3, 2, 4))
        .unwrap();
    let f = random_flip(&x, &mut rng(11)).unwrap();
    let fv = f.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let xv = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for i in 0..2 {
        let img = &xv[i * 24..(i + 1) * 24];
        let got = &fv[i * 24..(i + 1) * 24];
        let flipped: Vec<f32> = img
            .chunks(4)
            .flat_map(|row| row.iter().rev().copied())
            .collect();
        assert!(
            got == img || got == flipped.as_slice(),
            "image {i} neither kept nor mirrored"
        );
    }
    let mut flips = 0;
    for s in 0..64 {
        let mut r = rng(s);
        let f = random_flip(&x, &mut r)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        flips += (f[..24] != xv[..24]) as usize;
    }
    assert!((16..=48).contains(&flips), "{flips} flips of 64");
    assert!(random_flip(
        &Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap(),
        &mut rng(0)
    )
    .is_err());

    let u = Tensor::new(&[0f32, 0.25, 1.0], &Device::Cpu).unwrap();
    assert_eq!(
        scaler(&u, true).unwrap().to_vec1::<f32>().unwrap(),
        vec![-1.0, -0.5, 1.0]
    );
    assert_eq!(
        scaler(&u, false).unwrap().to_vec1::<f32>().unwrap(),
        vec![0.0, 0.25, 1.0]
    );
    assert_eq!(
        inverse_scaler(&scaler(&u, true).unwrap(), true)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
        vec![0.0, 0.25, 1.0]
    );
    let pix = Tensor::new(&[0f64, 17.0 / 255.0, 1.0], &Device::Cpu).unwrap();
    for s in 0..20 {
        let d = uniform_dequantize(&pix, &mut rng(s))
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        for (k, lo) in [0.0, 17.0, 255.0].iter().enumerate() {
            assert!(d[k] >= lo / 256.0 && d[k] < (lo + 1.0) / 256.0, "{d:?}");
        }
    }
}

#[test]
fn batch_source_closures() {
    let mut src = |step: u64, _rng: &mut dyn rand::RngCore| -> sde_train::Result<Tensor> {
        Ok(Tensor::new(&[step as f32], &Device::Cpu)?)
    };
    let b = BatchSource::batch(&mut src, 5, &mut rng(0)).unwrap();
    assert_eq!(b.to_vec1::<f32>().unwrap(), vec![5.0]);
}

#[test]
fn cifar10_binary_records() {
    let dir = tmpdir("cifar");
    let mut bytes = Vec::new();
    for (label, base) in [(3u8, 10u8), (9, 200)] {
        bytes.push(label);
        for c in 0..3u8 {
            for p in 0..1024usize {
                bytes.push(base.wrapping_add(c * 7).wrapping_add((p % 13) as u8));
            }
        }
    }
    let path = dir.join("data_batch_1.bin");
    std::fs::write(&path, &bytes).unwrap();
    let (x, labels) = load_cifar10(&[&path]).unwrap();
    assert_eq!(x.dims(), &[2, 3, 32, 32]);
    assert_eq!(labels, vec![3, 9]);
    // Pixel (image 1, green plane, row 0, col 5) = 200 + 7 + 5.
    let v = x
        .get(1)
        .unwrap()
        .get(1)
        .unwrap()
        .get(0)
        .unwrap()
        .get(5)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(v, 212.0 / 255.0);
    // Malformed: a cut record, a bad label, a missing file.
    std::fs::write(&path, &bytes[..CIFAR10_RECORD + 5]).unwrap();
    let e = load_cifar10(&[&path]).unwrap_err();
    assert!(
        matches!(&e, Error::Data { .. }) && e.to_string().contains("3073"),
        "{e}"
    );
    let mut bad = bytes.clone();
    bad[CIFAR10_RECORD] = 10;
    std::fs::write(&path, &bad).unwrap();
    assert!(load_cifar10(&[&path])
        .unwrap_err()
        .to_string()
        .contains("label 10"));
    let e = sde_train::load_cifar10_dir(&dir, false).unwrap_err();
    assert!(e.to_string().contains("test_batch.bin"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn idx(ty: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, ty, dims.len() as u8];
    for d in dims {
        b.extend(d.to_be_bytes());
    }
    b.extend(data);
    b
}

#[test]
fn mnist_idx_files() {
    let dir = tmpdir("mnist");
    let img = dir.join("images-idx3-ubyte");
    let data: Vec<u8> = (0..2 * 3 * 4).map(|i| (i * 10) as u8).collect();
    std::fs::write(&img, idx(0x08, &[2, 3, 4], &data)).unwrap();
    let x = load_mnist_images(&img).unwrap();
    assert_eq!(x.dims(), &[2, 1, 3, 4]);
    assert_eq!(
        x.flatten_all().unwrap().to_vec1::<f32>().unwrap()[13],
        130.0 / 255.0
    );
    let lab = dir.join("labels-idx1-ubyte");
    std::fs::write(&lab, idx(0x08, &[3], &[7, 0, 9])).unwrap();
    assert_eq!(load_mnist_labels(&lab).unwrap(), vec![7, 0, 9]);

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "short",
            idx(0x08, &[2, 3, 4], &data[..20]),
            "need 24 data bytes",
        ),
        ("magic", vec![1, 2, 8, 1, 0, 0, 0, 1, 5], "bad magic"),
        ("type", idx(0x0D, &[1], &[0, 0, 0, 0]), "not supported"),
        ("gz", vec![0x1f, 0x8b, 8, 0], "gzip"),
        ("header", vec![0, 0, 8, 3, 0, 0], "header truncated"),
    ];
    for (name, bytes, want) in cases {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        let e = load_idx(&p).unwrap_err();
        assert!(
            matches!(&e, Error::Data { .. }) && e.to_string().contains(want),
            "{name}: {e}"
        );
    }
    std::fs::write(&lab, idx(0x08, &[2], &[1, 12])).unwrap();
    assert!(load_mnist_labels(&lab)
        .unwrap_err()
        .to_string()
        .contains("12"));
    assert!(
        load_mnist_images(&lab).is_err(),
        "1-D file is not an image file"
    );
    assert!(matches!(
        load_idx(dir.join("missing")),
        Err(Error::Data { .. })
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn image_folder_resize_crop_and_grid() {
    let dir = tmpdir("folder");
    // A 12×6 image: left third red, middle green, right third blue.
    let mut a = image::RgbImage::new(12, 6);
    for (x, _, p) in a.enumerate_pixels_mut() {
        *p = image::Rgb(match x / 4 {
            0 => [255, 0, 0],
            1 => [0, 255, 0],
            _ => [0, 0, 255],
        });
    }
    a.save(dir.join("a.png")).unwrap();
    image::RgbImage::from_pixel(5, 9, image::Rgb([10, 20, 30]))
        .save(dir.join("b.jpg"))
        .unwrap();
    std::fs::write(dir.join("notes.txt"), "ignored").unwrap();
    let x = load_image_folder(&dir, 4).unwrap();
    assert_eq!(x.dims(), &[2, 3, 4, 4]);
    // Short side 6 → 4 gives 8×4, center crop keeps columns 2..6 of 8: green in the middle.
    let a = x.get(0).unwrap();
    let mid = a.get(1).unwrap().get(2).unwrap().to_vec1::<f32>().unwrap();
    assert!(mid[1] > 0.9 && mid[2] > 0.9, "green centre {mid:?}");
    // The constant JPEG stays (almost) constant.
    let b = to_host_f64(&x.get(1).unwrap().get(0).unwrap()).unwrap();
    assert!(b.iter().all(|v| (v - 10.0 / 255.0).abs() < 0.02), "{b:?}");

    let grid = dir.join("grid.png");
    save_image_grid(&x, 2, &grid).unwrap();
    let g = image::open(&grid).unwrap().to_rgb8();
    assert_eq!(g.dimensions(), (2 * (4 + 2) + 2, 4 + 2 + 2));
    assert_eq!(g.get_pixel(0, 0).0, [0, 0, 0], "padding");
    let p = g.get_pixel(2 + 6 + 1, 2 + 1).0; // image b
    assert!(
        (p[0] as i32 - 10).abs() <= 5 && (p[2] as i32 - 30).abs() <= 5,
        "{p:?}"
    );
    assert!(save_image_grid(
        &Tensor::zeros((1, 2, 4, 4), DType::F32, &Device::Cpu).unwrap(),
        1,
        &grid
    )
    .is_err());

    let empty = tmpdir("empty");
    assert!(load_image_folder(&empty, 4)
        .unwrap_err()
        .to_string()
        .contains("no .png"));
    std::fs::write(empty.join("broken.png"), b"not a png").unwrap();
    assert!(load_image_folder(&empty, 4)
        .unwrap_err()
        .to_string()
        .contains("cannot decode"));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&empty);
}
