//! Samplers return values, not autograd graphs: a score built from trainable variables (every
//! network in training) would otherwise keep each evaluation's forward graph alive through the
//! sampler's state — RK45's stages, a multistep history — which took an MNIST DDPM++ ODE run to
//! 22 GB before these detaches.

use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;
use sde_core::VpSde;
use sde_solvers::driver::Sampler;
use sde_solvers::ode_sampler::{OdeSampler, OdeSamplerOptions};
use sde_solvers::samplers::DpmSolverPp2M;
use sde_solvers::schedule::Schedule;

/// s(x, t) = −w x with a trainable w: the output carries a graph back to w.
fn var_score(w: &Var) -> impl Fn(&Tensor, &Tensor) -> sde_core::Result<Tensor> + '_ {
    move |x: &Tensor, _t: &Tensor| Ok(x.broadcast_mul(&w.as_tensor().neg()?)?)
}

fn reaches(x: &Tensor, w: &Var) -> bool {
    x.sum_all()
        .unwrap()
        .backward()
        .unwrap()
        .get(w.as_tensor())
        .is_some()
}

#[test]
fn a_trainable_score_leaves_no_graph_in_the_samples() {
    let dev = Device::Cpu;
    let w = Var::from_tensor(&Tensor::new(&[1.0f32], &dev).unwrap()).unwrap();
    let score = var_score(&w);
    // the check can fail: the score itself does reach w
    let x = Tensor::ones((2, 3), DType::F32, &dev).unwrap();
    assert!(reaches(&score(&x, &x).unwrap(), &w));

    let sde = VpSde::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let out = Sampler::new(
        DpmSolverPp2M::default(),
        Schedule::UniformLogSnr { sampling_eps: 1e-3 },
        5,
    )
    .sample(&sde, &score, (4, 3), &dev, DType::F32, &mut rng)
    .unwrap();
    assert!(
        !reaches(&out.x, &w),
        "driver samples keep the score's graph"
    );

    let ode = OdeSampler::new(&sde, &score, OdeSamplerOptions::default())
        .unwrap()
        .sample(&(4, 3).into(), &dev, DType::F32, &mut rng)
        .unwrap();
    assert!(!reaches(&ode.x, &w), "ODE samples keep the score's graph");
}
