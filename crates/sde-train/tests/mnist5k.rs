//! The embedded MNIST-5k subset: shapes, class balance, pixel statistics from its README, the
//! train / test split being disjoint, and the IDX bytes being the manifest's files.

use sde_train::{mnist5k, Split, MNIST5K_README};

fn host(x: &candle_core::Tensor) -> Vec<f32> {
    x.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn shapes_labels_and_balance() {
    for (split, n) in [(Split::Train, 4000usize), (Split::Test, 1000)] {
        let (x, y) = mnist5k(split).unwrap();
        assert_eq!(x.dims(), &[n, 1, 28, 28]);
        assert_eq!(y.len(), n);
        for digit in 0..10u8 {
            assert_eq!(
                y.iter().filter(|&&l| l == digit).count(),
                n / 10,
                "{split:?} {digit}"
            );
        }
        // Each set is shuffled: the first 100 labels are not one class.
        let first = y[0];
        assert!(y[..100].iter().any(|&l| l != first));
    }
}

#[test]
fn pixels_are_real_digits() {
    // README: "Pixel mean: 33.5 (train and test alike)", on the 0..255 scale.
    for split in [Split::Train, Split::Test] {
        let v = host(&mnist5k(split).unwrap().0);
        assert!(v.iter().all(|&p| (0.0..=1.0).contains(&p)));
        let mean = v.iter().map(|&p| p as f64).sum::<f64>() / v.len() as f64 * 255.0;
        assert!((mean - 33.5).abs() < 0.5, "{split:?} pixel mean {mean}");
        // MNIST is mostly background with saturated strokes.
        let zeros = v.iter().filter(|&&p| p == 0.0).count() as f64 / v.len() as f64;
        assert!(
            (0.7..0.9).contains(&zeros),
            "{split:?} background share {zeros}"
        );
        // Border rows of a centred MNIST digit are (nearly) empty: row 0 of every image.
        let n = v.len() / 784;
        let border: f64 = (0..n)
            .map(|i| v[i * 784..i * 784 + 28].iter().sum::<f32>() as f64)
            .sum();
        assert!(border / (n as f64) < 0.05, "{split:?} border mass {border}");
    }
}

#[test]
fn train_and_test_are_disjoint() {
    let key = |v: &[f32]| {
        v.iter()
            .map(|&p| (p * 255.0).round() as u8)
            .collect::<Vec<u8>>()
    };
    let tr = host(&mnist5k(Split::Train).unwrap().0);
    let te = host(&mnist5k(Split::Test).unwrap().0);
    let train: std::collections::HashSet<Vec<u8>> = tr.chunks(784).map(key).collect();
    assert_eq!(train.len(), 4000, "duplicate training images");
    assert!(te.chunks(784).all(|img| !train.contains(&key(img))));
}

#[test]
fn the_license_travels_with_the_data() {
    assert!(MNIST5K_README.contains("Creative Commons Attribution-Share Alike 3.0"));
    assert!(MNIST5K_README.contains("Yann LeCun"));
}
