//! Whole PC-sampler runs against `samplers.safetensors` (`pc_*`: `sampling.get_pc_sampler`
//! with the analytic N(0.3, 0.6²) model, shape (2,3,4,4), snr 0.16, n_steps_each 1,
//! denoise=True) fed the recorded prior and noise, and the time grid against
//! `time_grid.safetensors`. Tolerance 1e-5 · max|out| (the reference's own float32-vs-float64
//! spread is ~2e-7 of max|out|, vectors README).

mod pc_common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use pc_common::{host, load, Replay};
use sde_core::analytic::GaussianScore;
use sde_core::{timestep_index, Sde, SubVpSde, VeSde, VpSde};
use sde_solvers::corrector::{
    AnnealedLangevinDynamics, Corrector, CorrectorKind, LangevinCorrector, NoCorrector,
};
use sde_solvers::pc::{time_grid, PcSampler};
use sde_solvers::predictor::{
    AncestralSamplingPredictor, EulerMaruyamaPredictor, Predictor, PredictorKind,
    ReverseDiffusionPredictor,
};

fn check_run<S: Sde, P: Predictor<S>, C: Corrector<S>>(
    v: &HashMap<String, Tensor>,
    run: &str,
    sde: &S,
    eps: f64,
    sampler: PcSampler<P, C>,
) {
    let score = GaussianScore::isotropic(sde, 0.3, 0.6).unwrap();
    let mut noise =
        Replay::stacked(&v[&format!("{run}.noise")]).with_first(v[&format!("{run}.prior")].clone());
    let mut seen = Vec::new();
    let out = sampler
        .sampling_eps(eps)
        .sample_observed(
            sde,
            &score,
            (2, 3, 4, 4),
            &Device::Cpu,
            DType::F32,
            &mut noise,
            |i, t, x| {
                assert_eq!(x.dims(), &[2, 3, 4, 4]);
                seen.push((i, t));
            },
        )
        .unwrap();
    assert_eq!(noise.used(), noise.len(), "{run}: every recorded draw used");
    assert_eq!(seen.len(), sde.n(), "{run}: observer called once per step");
    assert_eq!(seen[0], (0, 1.0));
    assert_eq!(seen[sde.n() - 1], (sde.n() - 1, eps as f32 as f64));
    let nfe = v[&format!("{run}.nfe")].to_vec1::<i64>().unwrap()[0] as usize;
    // The reference records its nominal N · (n_steps_each + 1).
    assert_eq!(out.nfe_nominal, nfe, "{run}: nfe");
    let want = host(&v[&format!("{run}.out")]);
    let got = host(&out.x);
    let max = want.iter().fold(0.0f64, |m, w| m.max(w.abs()));
    let err = got
        .iter()
        .zip(&want)
        .fold(0.0f64, |m, (g, w)| m.max((g - w).abs()));
    eprintln!("{run}: max|diff|/max|out| = {:.2e}", err / max);
    assert!(
        err <= 1e-5 * max,
        "{run}: max diff {err:.3e} vs max|out| {max}"
    );
}

#[test]
fn pc_runs_match_reference() {
    let v = load("samplers.safetensors");
    let ve = VeSde::new(0.01, 50.0, 20).unwrap();
    let vp = VpSde::new(0.1, 20.0, 50).unwrap();
    let subvp = SubVpSde::new(0.1, 20.0, 50).unwrap();
    let lang = LangevinCorrector::new(0.16, 1).unwrap();
    check_run(
        &v,
        "pc_ve_rd_langevin",
        &ve,
        1e-5,
        PcSampler::new(ReverseDiffusionPredictor::new(false), lang),
    );
    check_run(
        &v,
        "pc_ve_ancestral_ald",
        &ve,
        1e-5,
        PcSampler::new(
            AncestralSamplingPredictor,
            AnnealedLangevinDynamics::new(0.16, 1).unwrap(),
        ),
    );
    check_run(
        &v,
        "pc_vp_em_none",
        &vp,
        1e-3,
        PcSampler::new(EulerMaruyamaPredictor::new(false), NoCorrector),
    );
    check_run(
        &v,
        "pc_vp_rd_langevin",
        &vp,
        1e-3,
        PcSampler::new(ReverseDiffusionPredictor::new(false), lang),
    );
    check_run(
        &v,
        "pc_vp_ancestral_none",
        &vp,
        1e-3,
        PcSampler::new(AncestralSamplingPredictor, NoCorrector),
    );
    check_run(
        &v,
        "pc_subvp_em_none",
        &subvp,
        1e-3,
        PcSampler::new(EulerMaruyamaPredictor::new(false), NoCorrector),
    );
    check_run(
        &v,
        "pc_ve_rd_pf_none",
        &ve,
        1e-5,
        PcSampler::new(ReverseDiffusionPredictor::new(true), NoCorrector),
    );
}

/// The same runs selected through the config enums.
#[test]
fn pc_runs_match_reference_with_config_enums() {
    let v = load("samplers.safetensors");
    let ve = VeSde::new(0.01, 50.0, 20).unwrap();
    let vp = VpSde::new(0.1, 20.0, 50).unwrap();
    let subvp = SubVpSde::new(0.1, 20.0, 50).unwrap();
    let lang = CorrectorKind::Langevin {
        snr: 0.16,
        n_steps_each: 1,
    };
    check_run(
        &v,
        "pc_ve_ancestral_ald",
        &ve,
        1e-5,
        PcSampler::new(
            PredictorKind::AncestralSampling,
            CorrectorKind::AnnealedLangevin {
                snr: 0.16,
                n_steps_each: 1,
            },
        ),
    );
    check_run(
        &v,
        "pc_vp_rd_langevin",
        &vp,
        1e-3,
        PcSampler::new(
            PredictorKind::ReverseDiffusion {
                probability_flow: false,
            },
            lang,
        ),
    );
    let em = PredictorKind::EulerMaruyama {
        probability_flow: false,
    }
    .for_any_sde()
    .unwrap();
    check_run(
        &v,
        "pc_subvp_em_none",
        &subvp,
        1e-3,
        PcSampler::new(em, CorrectorKind::None),
    );
    // sub-VP has no ancestral rule: a clear error instead of the reference's crash.
    let err = PredictorKind::AncestralSampling.for_any_sde().unwrap_err();
    assert!(err.to_string().contains("ancestral"), "{err}");
}

#[test]
fn time_grid_matches_torch_linspace() {
    let v = load("time_grid.safetensors");
    for (tag, eps) in [("eps1e-3", 1e-3), ("eps1e-5", 1e-5)] {
        let grid = time_grid(1.0, eps, 1000, DType::F32).unwrap();
        let want: Vec<f32> = v[&format!("{tag}.timesteps")].to_vec1().unwrap();
        let got: Vec<f32> = grid.iter().map(|&t| t as f32).collect();
        assert_eq!(got, want, "{tag}: bit-identical float32 grid");
        let t = Tensor::new(got.as_slice(), &Device::Cpu).unwrap();
        let idx = timestep_index(&t, 1000, 1.0).unwrap();
        let want_idx: Vec<i64> = v[&format!("{tag}.timestep_idx")].to_vec1().unwrap();
        assert_eq!(idx.iter().map(|&i| i as i64).collect::<Vec<_>>(), want_idx);
    }
}

#[test]
fn bad_options_are_errors() {
    let sde = VpSde::new(0.1, 20.0, 40).unwrap();
    let score = GaussianScore::isotropic(&sde, 0.3, 0.6).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    use rand::SeedableRng;
    for eps in [0.0, -1e-3, 1.0, 2.0, f64::NAN] {
        let s =
            PcSampler::new(ReverseDiffusionPredictor::new(false), NoCorrector).sampling_eps(eps);
        let r = s.sample(&sde, &score, (2, 2), &Device::Cpu, DType::F32, &mut rng);
        assert!(
            matches!(
                r,
                Err(sde_solvers::Error::InvalidParameter {
                    name: "sampling_eps",
                    ..
                })
            ),
            "{eps}"
        );
    }
    let s = PcSampler::new(
        ReverseDiffusionPredictor::new(false),
        CorrectorKind::Langevin {
            snr: 0.16,
            n_steps_each: 0,
        },
    );
    let r = s.sample(&sde, &score, (2, 2), &Device::Cpu, DType::F32, &mut rng);
    assert!(matches!(
        r,
        Err(sde_solvers::Error::InvalidParameter {
            name: "n_steps_each",
            ..
        })
    ));
}

/// A score that turns NaN below t = 0.5 stops the run with the step and time.
#[test]
fn non_finite_values_stop_the_sampler() {
    let sde = VpSde::new(0.1, 20.0, 40).unwrap();
    let score = |x: &Tensor, t: &Tensor| -> sde_core::Result<Tensor> {
        let tv = t.to_vec1::<f32>()?[0];
        Ok(if tv < 0.5 {
            (x.zeros_like()? / 0.0)?.affine(0.0, f64::NAN)?
        } else {
            x.neg()?
        })
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    use rand::SeedableRng;
    let s = PcSampler::new(
        ReverseDiffusionPredictor::new(false),
        LangevinCorrector::new(0.16, 1).unwrap(),
    );
    let err = s
        .sample(&sde, &score, (3, 2), &Device::Cpu, DType::F32, &mut rng)
        .unwrap_err();
    let grid = time_grid(1.0, 1e-3, 40, DType::F32).unwrap();
    let first_bad = grid.iter().position(|&t| t < 0.5).unwrap();
    match err {
        sde_solvers::Error::NonFinite { step, t, what } => {
            assert_eq!(step, first_bad);
            assert_eq!(t, grid[first_bad]);
            assert!(what.contains("corrector"), "{what}");
        }
        e => panic!("unexpected error {e}"),
    }
}

/// `sample_model(continuous = true)` goes through the reference's label convention: a VP
/// "network" that recovers t = label / 999 and returns −std(t)·score gives the same samples as
/// the score itself (the reference's own test model, vectors README).
#[test]
fn sample_model_applies_the_label_convention() {
    use rand::SeedableRng;
    use sde_core::{ScoreFn, ScoreModel};
    struct Net<'a>(&'a VpSde, GaussianScore<&'a VpSde>);
    impl ScoreModel for Net<'_> {
        fn forward_t(
            &self,
            x: &Tensor,
            labels: &Tensor,
            _mode: sde_core::Mode<'_>,
        ) -> sde_core::Result<Tensor> {
            let t = labels.affine(1.0 / 999.0, 0.0)?;
            let (_, std) = self.0.marginal_prob(x, &t)?;
            sde_core::mul_batch(&std.neg()?, &self.1.score(x, &t)?)
        }
    }
    let sde = VpSde::new(0.1, 20.0, 50).unwrap();
    let score = GaussianScore::isotropic(&sde, 0.3, 0.6).unwrap();
    let net = Net(&sde, score.clone());
    let s = PcSampler::new(
        ReverseDiffusionPredictor::new(false),
        LangevinCorrector::new(0.16, 1).unwrap(),
    );
    let shape = (4, 3);
    let a = s
        .sample_model(
            &sde,
            &net,
            true,
            shape,
            &Device::Cpu,
            DType::F32,
            &mut rand::rngs::StdRng::seed_from_u64(9),
        )
        .unwrap();
    let b = s
        .sample(
            &sde,
            &score,
            shape,
            &Device::Cpu,
            DType::F32,
            &mut rand::rngs::StdRng::seed_from_u64(9),
        )
        .unwrap();
    let (ga, gb) = (host(&a.x), host(&b.x));
    let max = gb.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for (x, y) in ga.iter().zip(&gb) {
        assert!((x - y).abs() <= 1e-5 * max, "{x} vs {y}");
    }
    assert_eq!(a.nfe, 100);
}
