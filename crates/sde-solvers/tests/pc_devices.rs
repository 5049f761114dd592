//! The same PC sampling case on every device and dtype: the fused CPU path (f32, f64), the
//! tensor-op fallback (f16 on the CPU, and every accelerator), and the device RNG on CUDA.
//! Data N(0.3, 0.6²), VP SDE, reverse diffusion + Langevin; the samples' mean and std must match.

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use sde_core::analytic::GaussianScore;
use sde_core::noise::NoiseSource;
use sde_core::VpSde;
use sde_solvers::corrector::LangevinCorrector;
use sde_solvers::pc::PcSampler;
use sde_solvers::predictor::ReverseDiffusionPredictor;

fn case<N: NoiseSource>(dev: &Device, dtype: DType, noise: &mut N, tol: f64) -> Tensor {
    let sde = VpSde::new(0.1, 20.0, 100).unwrap();
    let score = GaussianScore::isotropic(&sde, 0.3, 0.6).unwrap();
    let sampler = PcSampler::new(
        ReverseDiffusionPredictor::new(false),
        LangevinCorrector::new(0.16, 1).unwrap(),
    );
    let out = sampler
        .sample(&sde, &score, (4000, 2), dev, dtype, noise)
        .unwrap();
    assert_eq!(out.x.dtype(), dtype);
    assert_eq!(out.nfe, 200);
    let x: Vec<f64> = out
        .x
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let std = (x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    eprintln!("{dev:?} {dtype:?}: mean {mean:.4} std {std:.4}");
    // 8000 values: the mean's sampling std is 0.6/√8000 ≈ 0.007.
    assert!((mean - 0.3).abs() < 0.03 + tol, "mean {mean}");
    assert!((std / 0.6 - 1.0).abs() < 0.04 + tol, "std {std}");
    out.x
}

#[test]
fn cpu_f32_f64_fused_and_f16_fallback() {
    let dev = Device::Cpu;
    let a = case(
        &dev,
        DType::F32,
        &mut rand::rngs::StdRng::seed_from_u64(3),
        0.0,
    );
    let b = case(
        &dev,
        DType::F64,
        &mut rand::rngs::StdRng::seed_from_u64(3),
        0.0,
    );
    // Same seed: the f32 and f64 runs draw the same normals (f32 draws are rounded), so the
    // samples agree to float32 accuracy accumulated over 200 steps.
    let d = (a.to_dtype(DType::F64).unwrap() - &b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    eprintln!("f32 vs f64 max diff {d:.2e}");
    assert!(d < 1e-4, "f32 vs f64: {d}");
    // f16 has 11 bits of mantissa: looser moments.
    case(
        &dev,
        DType::F16,
        &mut rand::rngs::StdRng::seed_from_u64(3),
        0.03,
    );
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_with_device_noise() {
    let dev = Device::new_cuda(0).unwrap();
    let mut noise = sde_core::noise::DeviceNoise::new(&dev, 5).unwrap();
    let a = case(&dev, DType::F32, &mut noise, 0.0);
    let mut noise = sde_core::noise::DeviceNoise::new(&dev, 5).unwrap();
    let b = case(&dev, DType::F32, &mut noise, 0.0);
    let d = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(d, 0.0, "the seeded device generator reproduces");
    case(
        &dev,
        DType::F32,
        &mut rand::rngs::StdRng::seed_from_u64(3),
        0.0,
    );
}
