//! Perturbs a batch of 2-D data with the VE, VP and sub-VP SDEs and prints the empirical
//! marginal statistics beside the closed-form transition kernel.
//!
//! `cargo run --release -p sde-core --example marginals`

use candle_core::{DType, Device, Shape, Tensor};
use rand::SeedableRng;
use sde_core::analytic::GaussianMixture;
use sde_core::noise::randn_like;
use sde_core::{mul_batch, time_tensor, Result, Sde, SubVpSde, VeSde, VpSde};

fn report<S: Sde>(name: &str, sde: &S, x0: &Tensor, rng: &mut rand::rngs::StdRng) -> Result<()> {
    println!("{name}");
    println!("      t   a(t)      std(t)    empirical std of x(t) − a(t)·x(0)");
    let b = x0.dim(0)?;
    for t in [0.01, 0.1, 0.5, 1.0] {
        let tt = time_tensor(t, b, x0.device(), DType::F32)?;
        let (mean, std) = sde.marginal_prob(x0, &tt)?;
        let z = randn_like(x0, rng)?;
        let xt = (&mean + mul_batch(&std, &z)?)?;
        let (a, s) = sde.marginal_coeffs(&tt)?;
        let emp = (xt - mean)?.sqr()?.mean_all()?.sqrt()?.to_scalar::<f32>()?;
        let a0 = a.to_vec1::<f32>()?[0];
        let s0 = s.to_vec1::<f32>()?[0];
        println!("  {t:5.2}  {a0:8.5}  {s0:8.5}  {emp:8.5}");
    }
    Ok(())
}

fn main() -> Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let data = GaussianMixture::ring(8, 4.0, 0.2)?;
    let x0 = data.sample(
        &Shape::from((20_000, 2)),
        &Device::Cpu,
        DType::F32,
        &mut rng,
    )?;
    report("VE (sigma 0.01 → 50)", &VeSde::default(), &x0, &mut rng)?;
    report("VP (beta 0.1 → 20)", &VpSde::default(), &x0, &mut rng)?;
    report(
        "sub-VP (beta 0.1 → 20)",
        &SubVpSde::default(),
        &x0,
        &mut rng,
    )?;
    Ok(())
}
