//! Sharded bits/dim: the closed form on Gaussian data with the exact score, values independent
//! of batch and shard size, and a killed run resumed to exactly the uninterrupted result.

use std::cell::Cell;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use sde_core::analytic::GaussianScore;
use sde_core::VpSde;
use sde_eval::{bits_per_dim_sharded, BpdPlan, Dequantization, Error, Progress, ShardedBitsPerDim};
use sde_solvers::likelihood::{
    DataRange, DivergenceEstimator, HutchinsonProbe, Likelihood, LikelihoodOptions,
};
use sde_solvers::ode::{ErrorNorm, OdeMethod, Rk45Options};

const MEAN: f64 = 0.5;
const STD: f64 = 0.1;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sde_eval_bpd_{name}_{}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    d
}

/// 8-bit "images" `[n, 1, 4, 4]`: N(0.5, 0.1²) pixels quantised to k/255.
fn quantised_data(n: usize, seed: u64) -> Tensor {
    let sde = VpSde::default();
    let oracle = GaussianScore::isotropic(&sde, MEAN, STD).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let x = oracle
        .sample(&(n, 1, 4, 4).into(), &Device::Cpu, DType::F32, &mut rng)
        .unwrap();
    x.clamp(0.0, 1.0)
        .unwrap()
        .affine(255.0, 0.0)
        .unwrap()
        .round()
        .unwrap()
        .affine(1.0 / 255.0, 0.0)
        .unwrap()
}

fn options(error_norm: ErrorNorm) -> LikelihoodOptions {
    LikelihoodOptions {
        method: OdeMethod::Rk45(Rk45Options {
            error_norm,
            ..Default::default()
        }),
        // Two probes: the standard error machinery runs (Rademacher probes give the exact
        // trace of the isotropic Gaussian's diagonal Jacobian).
        estimator: DivergenceEstimator::Hutchinson {
            probe: HutchinsonProbe::Rademacher,
            n_probes: 2,
        },
        ..Default::default()
    }
}

fn slice(data: &Tensor) -> impl FnMut(u64, usize) -> sde_eval::Result<Tensor> + '_ {
    move |i, b| Ok(data.narrow(0, i as usize, b)?)
}

fn bits(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn run(dir: &PathBuf, plan: &BpdPlan, data: &Tensor) -> sde_eval::Result<ShardedBitsPerDim> {
    run_with_mean(dir, plan, data, MEAN)
}

fn run_with_mean(
    dir: &PathBuf,
    plan: &BpdPlan,
    data: &Tensor,
    mean: f64,
) -> sde_eval::Result<ShardedBitsPerDim> {
    let sde = VpSde::default();
    let oracle = GaussianScore::isotropic(&sde, mean, STD)?;
    let lik = Likelihood::new(&sde, &oracle, options(ErrorNorm::PerSample))?;
    bits_per_dim_sharded(dir, plan, &lik, slice(data), Progress::Hidden)
}

/// 8-bit data from N(μ, σ² I), dequantised, scored with the exact score: the mean bits/dim is
/// the cross-entropy ½ log₂(2πe σ²) + 8 per dimension (the 8 bits of the bin width 1/256 in
/// [0, 1]), within the reported standard error; the spread of the per-point values is that of
/// ½ Σ z² / (D ln 2), √(1/(2D)) / ln 2.
#[test]
fn gaussian_data_with_the_exact_score_give_the_entropy() {
    let n = 160;
    let data = quantised_data(n, 1);
    let dir = tmp("entropy");
    let plan = BpdPlan::new(n as u64, 64, 40, 7, DataRange::ZeroOne).unwrap();
    let out = run(&dir, &plan, &data).unwrap();
    let s = out.summary().unwrap();
    let d: f64 = 16.0;
    let want = 8.0 + 0.5 * (2.0 * std::f64::consts::PI * std::f64::consts::E * STD * STD).log2();
    let spread = (1.0 / (2.0 * d)).sqrt() / std::f64::consts::LN_2;
    eprintln!(
        "bits/dim {:.4} ± {:.4} (closed form {want:.4}); std {:.4} (theory {spread:.4}); nfe {}",
        s.mean, s.std_err, s.std, s.nfe
    );
    assert_eq!((s.n, s.dim, s.n_repeats), (n as u64, 16, 1));
    assert!((s.std_err - s.std / (n as f64).sqrt()).abs() < 1e-12);
    assert!(
        (s.std / spread - 1.0).abs() < 0.2,
        "per-point spread {} vs {spread}",
        s.std
    );
    assert!(
        (s.mean - want).abs() < 4.0 * s.std_err,
        "{} ± {} vs {want}",
        s.mean,
        s.std_err
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// Without dequantisation, each value is the closed-form −log p_ε(x) / (D ln 2) + 8 of its
/// data point, up to the solver tolerance and the gap between p_T and the prior N(0, I)
/// (centred data: p_T = N(0, 1 − e^{−∫β}(1 − σ²)), a gap of 10⁻⁵ nats per dimension); repeats
/// of a continuous point differ only by their probes, which are exact here.
#[test]
fn each_value_is_the_closed_form_log_density() {
    let n = 12u64;
    let sde = VpSde::default();
    let oracle = GaussianScore::isotropic(&sde, 0.0, STD).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let data = oracle
        .sample(
            &(n as usize, 1, 4, 4).into(),
            &Device::Cpu,
            DType::F32,
            &mut rng,
        )
        .unwrap();
    let dir = tmp("closed");
    let plan = BpdPlan {
        dequantization: Dequantization::None,
        n_repeats: 2,
        ..BpdPlan::new(n, 5, 4, 3, DataRange::ZeroOne).unwrap()
    };
    let out = run_with_mean(&dir, &plan, &data, 0.0).unwrap();
    let values = out.values().unwrap();
    assert_eq!(values.len(), 2 * n as usize);
    let t = sde_core::time_tensor(1e-5, n as usize, &Device::Cpu, DType::F64).unwrap();
    let exact = oracle
        .log_prob(&data.to_dtype(DType::F64).unwrap(), &t)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let per_point = out.per_point().unwrap();
    for (i, lp) in exact.iter().enumerate() {
        let want = -lp / (16.0 * std::f64::consts::LN_2) + 8.0;
        for v in [values[i], values[n as usize + i], per_point[i]] {
            assert!((v - want).abs() < 2e-4, "point {i}: {v} vs {want}");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn values_do_not_depend_on_batch_or_shard_size() {
    let n = 23u64;
    let data = quantised_data(n as usize, 2);
    let mut runs = Vec::new();
    for (i, (shard, batch)) in [(23u64, 23usize), (5, 3), (1, 1), (10, 7)]
        .into_iter()
        .enumerate()
    {
        let dir = tmp(&format!("inv{i}"));
        let plan = BpdPlan {
            n_repeats: 2,
            ..BpdPlan::new(n, shard, batch, 11, DataRange::ZeroOne).unwrap()
        };
        let out = run(&dir, &plan, &data).unwrap();
        runs.push((bits(&out.values().unwrap()), out.summary().unwrap()));
        std::fs::remove_dir_all(&dir).ok();
    }
    for (v, s) in &runs[1..] {
        assert!(*v == runs[0].0, "values differ");
        assert_eq!(s.mean.to_bits(), runs[0].1.mean.to_bits());
    }
    // The two repeats of a point differ (fresh dequantisation noise), and so does another seed.
    let v = &runs[0].0;
    assert!(v[..n as usize] != v[n as usize..]);
    let dir = tmp("inv_seed");
    let other = run(
        &dir,
        &BpdPlan {
            n_repeats: 2,
            ..BpdPlan::new(n, 23, 23, 12, DataRange::ZeroOne).unwrap()
        },
        &data,
    )
    .unwrap();
    assert!(bits(&other.values().unwrap()) != *v);
    std::fs::remove_dir_all(&dir).ok();

    // The scipy-compatible batch error norm couples the samples of a batch: refused.
    let sde = VpSde::default();
    let oracle = GaussianScore::isotropic(&sde, MEAN, STD).unwrap();
    let lik = Likelihood::new(&sde, &oracle, options(ErrorNorm::Batch)).unwrap();
    let plan = BpdPlan::new(n, 5, 4, 0, DataRange::ZeroOne).unwrap();
    let err = bits_per_dim_sharded(
        tmp("batchnorm"),
        &plan,
        &lik,
        slice(&data),
        Progress::Hidden,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidParameter {
                name: "batch_size",
                ..
            }
        ),
        "{err}"
    );
    // ... but fine one sample at a time.
    let dir = tmp("batchnorm1");
    let plan = BpdPlan::new(3, 5, 1, 0, DataRange::ZeroOne).unwrap();
    assert!(bits_per_dim_sharded(&dir, &plan, &lik, slice(&data), Progress::Hidden).is_ok());
    std::fs::remove_dir_all(&dir).ok();
    std::fs::remove_dir_all(tmp("batchnorm")).ok();
}

#[test]
fn a_killed_run_resumes_to_the_uninterrupted_result() {
    let n = 20u64;
    let data = quantised_data(n as usize, 3);
    let plan = BpdPlan::new(n, 6, 3, 5, DataRange::ZeroOne).unwrap();
    let whole_dir = tmp("whole");
    let whole = run(&whole_dir, &plan, &data).unwrap();
    let want = bits(&whole.values().unwrap());

    // "Kill" the run in its 5th data call (third shard): the data source fails there.
    let dir = tmp("killed");
    let sde = VpSde::default();
    let oracle = GaussianScore::isotropic(&sde, MEAN, STD).unwrap();
    let lik = Likelihood::new(&sde, &oracle, options(ErrorNorm::PerSample)).unwrap();
    let calls = Cell::new(0);
    let dying = |i: u64, b: usize| {
        calls.set(calls.get() + 1);
        if calls.get() == 5 {
            return Err(Error::User {
                what: "data",
                source: "killed".into(),
            });
        }
        Ok(data.narrow(0, i as usize, b)?)
    };
    assert!(bits_per_dim_sharded(&dir, &plan, &lik, dying, Progress::Hidden).is_err());
    let names = |d: &PathBuf| {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    // Two whole shards (2 calls each) and no partial third one.
    assert_eq!(
        names(&dir),
        [
            "bpd_000000.safetensors",
            "bpd_000001.safetensors",
            "bpd_plan.json"
        ]
    );
    // A writer killed mid-write leaves a temporary file; a shard was damaged, another lost.
    std::fs::write(dir.join(".bpd_000002.safetensors.tmp.999"), b"partial").unwrap();
    std::fs::write(dir.join("bpd_000000.safetensors"), b"damaged").unwrap();
    // Resume with another batch size: only the damaged and missing shards are computed.
    let points = Cell::new(0usize);
    let counting = |i: u64, b: usize| {
        points.set(points.get() + b);
        Ok(data.narrow(0, i as usize, b)?)
    };
    let resumed = bits_per_dim_sharded(
        &dir,
        &BpdPlan {
            batch_size: 4,
            ..plan.clone()
        },
        &lik,
        counting,
        Progress::Hidden,
    )
    .unwrap();
    assert_eq!(points.get(), 20 - 6, "shard 1 was kept");
    assert!(bits(&resumed.values().unwrap()) == want);
    // Equal summaries, but for the NFE: it counts batched drift calls, so it follows batching.
    let (a, b) = (resumed.summary().unwrap(), whole.summary().unwrap());
    assert_eq!(
        sde_eval::BitsPerDim { nfe: 0, ..a },
        sde_eval::BitsPerDim { nfe: 0, ..b }
    );

    // Another seed, another model tag or another likelihood setting in the same folder is
    // refused, naming the plan file.
    for other in [
        BpdPlan {
            seed: 6,
            ..plan.clone()
        },
        BpdPlan {
            model: Some("another checkpoint".into()),
            ..plan.clone()
        },
    ] {
        let err =
            bits_per_dim_sharded(&dir, &other, &lik, slice(&data), Progress::Hidden).unwrap_err();
        assert!(
            matches!(&err, Error::File { path, .. } if path.ends_with("bpd_plan.json")),
            "{err}"
        );
    }
    let opts = LikelihoodOptions {
        sampling_eps: 1e-3,
        ..options(ErrorNorm::PerSample)
    };
    let lik2 = Likelihood::new(&sde, &oracle, opts).unwrap();
    assert!(bits_per_dim_sharded(&dir, &plan, &lik2, slice(&data), Progress::Hidden).is_err());
    // A missing shard after the fact: the summary says which.
    std::fs::remove_file(dir.join("bpd_000003.safetensors")).unwrap();
    let err = resumed.summary().unwrap_err();
    assert!(err.to_string().contains("bpd_000003"), "{err}");
    // Bad plans and bad data are errors, not panics.
    assert!(BpdPlan::new(0, 1, 1, 0, DataRange::ZeroOne).is_err());
    let bad = BpdPlan {
        bit_depth: 0,
        ..plan.clone()
    };
    assert!(bits_per_dim_sharded(tmp("bad"), &bad, &lik, slice(&data), Progress::Hidden).is_err());
    let wrong = |_: u64, _b: usize| Ok(Tensor::zeros((1, 16), DType::F32, &Device::Cpu)?);
    let err = bits_per_dim_sharded(tmp("wrong"), &plan, &lik, wrong, Progress::Hidden).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    let outside = |_: u64, b: usize| Ok(Tensor::full(1.5f32, (b, 1, 4, 4), &Device::Cpu)?);
    assert!(bits_per_dim_sharded(tmp("outside"), &plan, &lik, outside, Progress::Hidden).is_err());
    for d in [
        &dir,
        &whole_dir,
        &tmp("bad"),
        &tmp("wrong"),
        &tmp("outside"),
    ] {
        std::fs::remove_dir_all(d).ok();
    }
}
