//! Every sampler × {VE, VP, sub-VP, a user cosine VP} through the exported harness: measured
//! convergence order against the exact probability-flow map of Gaussian data, and sample
//! quality on a Gaussian mixture against exact draws.

mod samplers_common;

use candle_core::{DType, Device, Tensor};
use samplers_common::cosine;
use sde_core::analytic::GaussianMixture;
use sde_core::{Sde, SubVpSde, VeSde, VpSde};
use sde_solvers::corrector::NoCorrector;
use sde_solvers::driver::Sampler;
use sde_solvers::harness::{convergence_order, mixture_quality};
use sde_solvers::pc::PcStep;
use sde_solvers::predictor::EulerMaruyamaPredictor;
use sde_solvers::samplers::{
    Ddim, DpmSolverPp2M, DpmSolverPp2S, DpmSolverPp3M, EdmHeun, Prediction, SdeDpmSolverPp2M, UniPc,
};
use sde_solvers::schedule::Schedule;
use sde_solvers::step::Step;

fn x_t(scale: f64) -> Tensor {
    // 64 fixed points of N(0, scale²) (a deterministic quasi-random spread).
    let v: Vec<f64> = (0..64)
        .map(|i| scale * 2.5 * (((i as f64 + 0.5) / 64.0) * 2.0 - 1.0))
        .collect();
    Tensor::from_vec(v, (64, 1), &Device::Cpu).unwrap()
}

/// The schedule the convergence tests use on `sde`.
fn schedule_for(sde: &dyn SdeInfo) -> Schedule {
    Schedule::UniformLogSnr {
        sampling_eps: sde.eps(),
    }
}

trait SdeInfo {
    fn eps(&self) -> f64;
    fn prior_std(&self) -> f64;
}
impl SdeInfo for VeSde {
    fn eps(&self) -> f64 {
        1e-5
    }
    fn prior_std(&self) -> f64 {
        self.sigma_max()
    }
}
impl SdeInfo for VpSde {
    fn eps(&self) -> f64 {
        1e-3
    }
    fn prior_std(&self) -> f64 {
        1.0
    }
}
impl SdeInfo for SubVpSde {
    fn eps(&self) -> f64 {
        1e-3
    }
    fn prior_std(&self) -> f64 {
        1.0
    }
}
impl SdeInfo for samplers_common::CosineVp {
    fn eps(&self) -> f64 {
        1e-3
    }
    fn prior_std(&self) -> f64 {
        1.0
    }
}

fn check_order<S: Sde + SdeInfo, St: Step<S>>(
    sde: &S,
    name: &str,
    step: &St,
    order: f64,
    steps: &[usize],
    failures: &mut Vec<String>,
) {
    let rep = convergence_order(
        sde,
        step,
        &schedule_for(sde),
        steps,
        0.5,
        0.3,
        &x_t(sde.prior_std()),
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    eprintln!("{name}: slope {:.2}, errors {:?}", rep.slope, rep.errors);
    let finite = rep.errors.iter().all(|e| e.is_finite());
    if !(finite && rep.slope > order - 0.3 && rep.slope < order + 1.2) {
        failures.push(format!(
            "{name}: measured order {:.2}, expected {order} ({:?})",
            rep.slope, rep.errors
        ));
    }
}

fn orders_on<S: Sde + SdeInfo>(sde: &S, label: &str) {
    let mut failures = Vec::new();
    let f = &mut failures;
    let steps = [20, 40, 80];
    check_order(
        sde,
        &format!("{label}/ddim"),
        &Ddim::default(),
        1.0,
        &steps,
        f,
    );
    check_order(
        sde,
        &format!("{label}/euler"),
        &PcStep {
            predictor: EulerMaruyamaPredictor::new(true),
            corrector: NoCorrector,
        },
        1.0,
        &[64, 128, 256],
        f,
    );
    for pred in [Prediction::Data, Prediction::Noise] {
        let lof = false;
        check_order(
            sde,
            &format!("{label}/2M {pred:?}"),
            &DpmSolverPp2M {
                prediction: pred,
                lower_order_final: lof,
            },
            2.0,
            &steps,
            f,
        );
        check_order(
            sde,
            &format!("{label}/3M {pred:?}"),
            &DpmSolverPp3M {
                prediction: pred,
                lower_order_final: lof,
                reference_d2: false,
            },
            3.0,
            &steps,
            f,
        );
        check_order(
            sde,
            &format!("{label}/2S {pred:?}"),
            &DpmSolverPp2S { prediction: pred },
            2.0,
            &steps,
            f,
        );
        let mut uni = UniPc::default();
        uni.prediction = pred;
        uni.lower_order_final = false;
        check_order(
            sde,
            &format!("{label}/UniPC-bh2 {pred:?}"),
            &uni,
            3.0,
            &steps,
            f,
        );
    }
    check_order(
        sde,
        &format!("{label}/edm heun"),
        &EdmHeun::deterministic(),
        2.0,
        &steps,
        f,
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn convergence_orders_ve() {
    orders_on(&VeSde::new(0.01, 50.0, 1000).unwrap(), "VE");
}

#[test]
fn convergence_orders_vp() {
    orders_on(&VpSde::default(), "VP");
}

#[test]
fn convergence_orders_subvp() {
    orders_on(&SubVpSde::default(), "subVP");
}

#[test]
fn convergence_orders_user_cosine_vp() {
    orders_on(&cosine(), "cosine");
}

fn quality<S: Sde + SdeInfo, St: Step<S>>(sde: &S, name: &str, sampler: Sampler<St>) {
    let gmm = GaussianMixture::ring(8, 4.0, 0.3).unwrap();
    let rep = mixture_quality(sde, &sampler, &gmm, 600, 3).unwrap();
    eprintln!(
        "{name}: ED {:.4} (floor {:.4}), NFE {}, share err {:.3}",
        rep.energy_distance, rep.floor, rep.nfe, rep.max_share_error
    );
    assert!(
        rep.energy_distance < 3.0 * rep.floor.abs().max(0.01),
        "{name}: energy distance {:.4} vs floor {:.4}",
        rep.energy_distance,
        rep.floor
    );
    assert!(rep.max_share_error < 0.06, "{name}: {:?}", rep.mode_shares);
}

fn quality_on<S: Sde + SdeInfo>(sde: &S, label: &str, n: usize) {
    let sched = schedule_for(sde);
    quality(
        sde,
        &format!("{label}/ddim"),
        Sampler::new(Ddim::default(), sched.clone(), n),
    );
    quality(
        sde,
        &format!("{label}/ddim eta=1"),
        Sampler::new(Ddim::new(1.0).unwrap(), sched.clone(), n),
    );
    quality(
        sde,
        &format!("{label}/2M"),
        Sampler::new(DpmSolverPp2M::default(), sched.clone(), n),
    );
    quality(
        sde,
        &format!("{label}/3M"),
        Sampler::new(DpmSolverPp3M::default(), sched.clone(), n),
    );
    quality(
        sde,
        &format!("{label}/2S"),
        Sampler::new(DpmSolverPp2S::default(), sched.clone(), n / 2),
    );
    quality(
        sde,
        &format!("{label}/SDE-2M"),
        Sampler::new(SdeDpmSolverPp2M::default(), sched.clone(), 2 * n),
    );
    quality(
        sde,
        &format!("{label}/UniPC"),
        Sampler::new(UniPc::default(), sched.clone(), n),
    );
    // EDM's sampler on EDM's schedule (two evaluations per step)
    let _ = sched;
    let karras = Schedule::karras(sde, sde.eps(), 7.0).unwrap();
    quality(
        sde,
        &format!("{label}/heun"),
        Sampler::new(EdmHeun::deterministic(), karras.clone(), n),
    );
    quality(
        sde,
        &format!("{label}/heun churn"),
        Sampler::new(
            EdmHeun::stochastic(10.0, 0.0, f64::INFINITY, 1.0).unwrap(),
            karras,
            n,
        ),
    );
}

#[test]
fn mixture_quality_ve() {
    quality_on(&VeSde::new(0.01, 50.0, 1000).unwrap(), "VE", 30);
}

#[test]
fn mixture_quality_vp() {
    quality_on(&VpSde::default(), "VP", 20);
}

#[test]
fn mixture_quality_subvp() {
    quality_on(&SubVpSde::default(), "subVP", 20);
}

#[test]
fn mixture_quality_user_cosine_vp() {
    quality_on(&cosine(), "cosine", 20);
}

#[test]
fn harness_rejects_a_single_step_count() {
    let sde = VpSde::default();
    assert!(convergence_order(
        &sde,
        &Ddim::default(),
        &Schedule::default(),
        &[10],
        0.0,
        1.0,
        &x_t(1.0)
    )
    .is_err());
    let _ = DType::F64;
}
