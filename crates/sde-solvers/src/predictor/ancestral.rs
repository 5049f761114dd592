//! Ancestral sampling (SMLD / DDPM) predictor.

use candle_core::Tensor;
use sde_core::noise::{randn_like, NoiseSource};
use sde_core::{AncestralSde, ScoreFn};

use super::fused::{Coeff, Terms};
use super::{Predictor, Update};
use crate::error::Result;
use crate::step::StepCtx;

/// Ancestral sampling predictor (`AncestralSamplingPredictor`), the original samplers of
/// SMLD and DDPM, for SDEs implementing [`AncestralSde`] (VE and VP; sub-VP has no ancestral
/// rule, so `AncestralSamplingPredictor` with a `SubVpSde` does not compile):
///
/// - VE: x̄ = x + (σ_i² − σ_{i−1}²) s,  x = x̄ + √(σ_{i−1}² (σ_i² − σ_{i−1}²) / σ_i²) z;
/// - VP: x̄ = (x + β_i s) / √(1 − β_i),  x = x̄ + √β_i z;
///
/// i = ⌊t (N−1)/T⌋, z ~ N(0, I). No probability-flow variant (the reference asserts that).
///
/// Pairing it with sub-VP is a compile error (the reference raises at run time):
/// ```compile_fail
/// use candle_core::{DType, Device};
/// use rand::SeedableRng;
/// use sde_core::{analytic::GaussianScore, SubVpSde};
/// use sde_solvers::{corrector::NoCorrector, pc::PcSampler, predictor::AncestralSamplingPredictor};
/// let sde = SubVpSde::new(0.1, 20.0, 50)?;
/// let score = GaussianScore::isotropic(&sde, 0.0, 1.0)?;
/// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
/// PcSampler::new(AncestralSamplingPredictor, NoCorrector)
///     .sample(&sde, &score, (2, 2), &Device::Cpu, DType::F32, &mut rng)?;
/// # Ok::<(), sde_solvers::Error>(())
/// ```
/// while VE and VP work:
/// ```
/// use candle_core::{DType, Device};
/// use rand::SeedableRng;
/// use sde_core::{analytic::GaussianScore, VpSde};
/// use sde_solvers::{corrector::NoCorrector, pc::PcSampler, predictor::AncestralSamplingPredictor};
/// let sde = VpSde::new(0.1, 20.0, 50)?;
/// let score = GaussianScore::isotropic(&sde, 0.0, 1.0)?;
/// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
/// let out = PcSampler::new(AncestralSamplingPredictor, NoCorrector)
///     .sample(&sde, &score, (2, 2), &Device::Cpu, DType::F32, &mut rng)?;
/// // 50 evaluations made; the reference reports N · (n_steps_each + 1) = 100
/// assert_eq!((out.nfe, out.nfe_nominal), (50, 100));
/// # Ok::<(), sde_solvers::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AncestralSamplingPredictor;

impl<S: AncestralSde + ?Sized> Predictor<S> for AncestralSamplingPredictor {
    fn update<F: ScoreFn + ?Sized, N: NoiseSource + ?Sized>(
        &self,
        sde: &S,
        score: &F,
        x: &Tensor,
        t: &Tensor,
        noise: &mut N,
    ) -> Result<Update> {
        let s = score.score(x, t)?;
        let (x_mean, std) = sde.ancestral_step(x, t, &s)?;
        let z = randn_like(x, noise)?;
        let std = Coeff::of(&std)?;
        Terms {
            x: &x_mean,
            f: None,
            s: None,
            z: Some((&z, &std)),
        }
        .apply()
    }

    /// Refuses grids other than the SDE's chain ([`GridKind::SdeChain`](crate::step::GridKind)).
    fn update_step<F: ScoreFn + ?Sized, N: NoiseSource + ?Sized>(
        &self,
        ctx: &StepCtx,
        sde: &S,
        score: &F,
        x: &Tensor,
        t: &Tensor,
        noise: &mut N,
    ) -> Result<Update> {
        super::require_chain(ctx, "ancestral sampling")?;
        self.update(sde, score, x, t, noise)
    }
}
