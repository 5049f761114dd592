//! Bad input through the transforms and the image grid writer: integer dtypes, wrong ranks,
//! out-of-range or non-finite data give typed errors, never panics; empty batches are accepted
//! where the result is well defined.

use std::panic::{catch_unwind, AssertUnwindSafe};

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use sde_train::{inverse_scaler, save_image_grid, scaler, uniform_dequantize, Error, Result};

fn no_panic<T>(case: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => panic!("{case}: panicked instead of returning an error"),
    }
}

#[test]
fn transforms_refuse_integer_and_out_of_range_data() {
    let d = Device::Cpu;
    let x = Tensor::new(&[[0.0f32, 0.5], [1.0, 0.25]], &d).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    for dt in [DType::U8, DType::U32, DType::I64] {
        let xi = x.to_dtype(dt).unwrap();
        for centered in [false, true] {
            assert!(matches!(
                no_panic("scaler", || scaler(&xi, centered)),
                Err(Error::ShapeMismatch { .. })
            ));
            assert!(matches!(
                no_panic("inverse_scaler", || inverse_scaler(&xi, centered)),
                Err(Error::ShapeMismatch { .. })
            ));
        }
        assert!(matches!(
            no_panic("uniform_dequantize", || uniform_dequantize(&xi, &mut rng)),
            Err(Error::ShapeMismatch { .. })
        ));
    }
    for bad in [1.5f32, -0.1, f32::NAN, f32::INFINITY] {
        let xb = Tensor::new(&[[0.5f32, bad]], &d).unwrap();
        assert!(
            matches!(
                no_panic("uniform_dequantize", || uniform_dequantize(&xb, &mut rng)),
                Err(Error::InvalidParameter { name: "x", .. })
            ),
            "{bad}"
        );
    }
    // accepted: half precision, empty batches
    let h = uniform_dequantize(&x.to_dtype(DType::BF16).unwrap(), &mut rng).unwrap();
    assert_eq!(h.dtype(), DType::BF16);
    let e = Tensor::zeros((0, 2), DType::F32, &d).unwrap();
    assert_eq!(uniform_dequantize(&e, &mut rng).unwrap().dims(), &[0, 2]);
    assert_eq!(scaler(&e, true).unwrap().dims(), &[0, 2]);
}

#[test]
fn the_image_grid_writer_checks_its_input() {
    let dir = std::env::temp_dir().join(format!("sde-train-grid-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("g.png");
    let d = Device::Cpu;
    for (case, x, nrow) in [
        (
            "rank 3",
            Tensor::zeros((1, 4, 4), DType::F32, &d).unwrap(),
            1,
        ),
        ("rank 0", Tensor::new(0f32, &d).unwrap(), 1),
        ("u8", Tensor::zeros((1, 1, 4, 4), DType::U8, &d).unwrap(), 1),
        (
            "2 channels",
            Tensor::zeros((1, 2, 4, 4), DType::F32, &d).unwrap(),
            1,
        ),
        (
            "empty batch",
            Tensor::zeros((0, 1, 4, 4), DType::F32, &d).unwrap(),
            1,
        ),
        (
            "nrow 0",
            Tensor::zeros((1, 1, 4, 4), DType::F32, &d).unwrap(),
            0,
        ),
    ] {
        assert!(
            matches!(
                no_panic(case, || save_image_grid(&x, nrow, &p)),
                Err(Error::ShapeMismatch { .. })
            ),
            "{case}"
        );
    }
    let ok = Tensor::ones((3, 3, 4, 4), DType::F16, &d).unwrap();
    save_image_grid(&ok, 2, &p).unwrap();
    assert!(p.exists());
    let _ = std::fs::remove_dir_all(&dir);
}
