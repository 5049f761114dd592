//! Reverse-diffusion predictor: the forward discretisation run backwards.

use candle_core::Tensor;
use sde_core::noise::{randn_like, NoiseSource};
use sde_core::{ScoreFn, Sde};

use super::fused::{Coeff, Terms};
use super::{Predictor, Update};
use crate::error::Result;
use crate::step::StepCtx;

/// Reverse-diffusion predictor (`ReverseDiffusionPredictor`, eq. (46) of the paper): with the
/// forward discretisation x_{i+1} = x_i + f_i(x_i) + G_i z_i ([`Sde::discretize`]),
///
/// x̄ = x − f_i(x) + w G_i² s(x, t),  x = x̄ + (1−pf) G_i z,  z ~ N(0, I),
///
/// with w = 1 for the reverse SDE and w = ½ without noise for the probability-flow ODE. For VE
/// this is the SMLD chain (G_i² = σ_i² − σ_{i−1}²), for VP the DDPM chain. One score
/// evaluation and one noise draw per step (also for the ODE, as the reference).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReverseDiffusionPredictor {
    /// Integrate the probability-flow ODE instead of the reverse SDE.
    pub probability_flow: bool,
}

impl ReverseDiffusionPredictor {
    /// The predictor for the reverse SDE (`false`) or the probability-flow ODE (`true`).
    pub fn new(probability_flow: bool) -> Self {
        Self { probability_flow }
    }
}

impl<S: Sde + ?Sized> Predictor<S> for ReverseDiffusionPredictor {
    fn update<F: ScoreFn + ?Sized, N: NoiseSource + ?Sized>(
        &self,
        sde: &S,
        score: &F,
        x: &Tensor,
        t: &Tensor,
        noise: &mut N,
    ) -> Result<Update> {
        let (f, g) = sde.discretize(x, t)?;
        let s = score.score(x, t)?;
        let w = if self.probability_flow { 0.5 } else { 1.0 };
        let z = randn_like(x, noise)?;
        let g = Coeff::of(&g)?;
        // x̄ = x − f + w G² s,  x = x̄ + G z
        let a = g.map(|g| w * g * g);
        Terms {
            x,
            f: Some((&f, -1.0)),
            s: Some((&s, &a)),
            z: (!self.probability_flow).then_some((&z, &g)),
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
        super::require_chain(ctx, "reverse diffusion")?;
        self.update(sde, score, x, t, noise)
    }
}
