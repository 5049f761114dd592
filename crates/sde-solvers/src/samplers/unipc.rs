//! UniPC: the unified predictor–corrector multistep solver (bh2 variant).

use candle_core::Tensor;
use sde_core::noise::NoiseSource;
use sde_core::{ScoreFn, Sde};

use super::{
    deterministic, expo, lin, model_output, points, step_order, to_clean, to_data, tweedie,
    History, Point, Prediction,
};
use crate::error::{Error, Result};
use crate::predictor::Update;
use crate::step::{Step, StepCtx, StepIo};

/// UniPC (Zhao et al. 2023; diffusers' `UniPCMultistepScheduler` with `solver_type = "bh2"`):
/// the order-p predictor UniP and the corrector UniC, one evaluation per step.
///
/// With h = λ_t − λ_s, ĥ = −h (data prediction; ĥ = h for noise), r_k = (λ_{s_k} − λ_s)/h for
/// the previous points and D_k = (m_k − m₀)/r_k:
///
/// UniP: x̃_t = r x_s − c [φ₁ m₀ + B(h) Σ_k ρ_k D_k],  B(h) = e^ĥ − 1 (bh2),
/// with ρ = ½ for p = 2 and ρ solving R ρ = b (R_{ik} = r_k^{i−1}, b_i = i! φ_{i+1}(ĥ)/B(h)),
/// r, c as in DPM-Solver++ ([`super`]).
/// UniC: once the model is evaluated at x̃_t (that evaluation is the next step's m₀, so the
/// corrector costs nothing), x_t = r x_s − c [φ₁ m₀ + B(h)(Σ_k ρᶜ_k D_k + ρᶜ_t (m_t − m₀))].
///
/// UniPC-p with UniC has order p + 1: `order = 2` (the default) is third order. The first step
/// is first order (then corrected), the last step is not corrected (no evaluation follows it);
/// `lower_order_final` as in DPM-Solver (< 15 steps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[doc(alias = "UniPCMultistepScheduler")]
pub struct UniPc {
    order: usize,
    /// Data (`predict_x0`, default) or noise prediction.
    pub prediction: Prediction,
    /// Apply the corrector UniC (default on).
    pub corrector: bool,
    /// Lower the order of the last steps of short runs (< 15 steps).
    pub lower_order_final: bool,
}

impl UniPc {
    /// UniPC with predictor order p ∈ {1, 2, 3} (`solver_order`), data prediction, corrector on.
    pub fn new(order: usize) -> Result<Self> {
        if !(1..=3).contains(&order) {
            return Err(Error::InvalidParameter {
                name: "solver_order",
                value: order as f64,
                reason: "UniPC's predictor order must be 1, 2 or 3",
            });
        }
        Ok(Self {
            order,
            prediction: Prediction::Data,
            corrector: true,
            lower_order_final: true,
        })
    }
    /// The predictor order p.
    pub fn order(&self) -> usize {
        self.order
    }
}

impl Default for UniPc {
    /// p = 2 (bh2 with UniC: third order).
    fn default() -> Self {
        Self {
            order: 2,
            prediction: Prediction::Data,
            corrector: true,
            lower_order_final: true,
        }
    }
}

/// UniPC's per-run state: model outputs and the previous step's start and order.
#[derive(Debug, Default, Clone)]
pub struct UniPcState {
    hist: History,
    last: Option<Tensor>,
    last_order: usize,
}

/// ρ solving `R ρ = b` (Gaussian elimination with partial pivoting, k ≤ 3).
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Result<Vec<f64>> {
    let k = b.len();
    for c in 0..k {
        let p = (c..k)
            .max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs()))
            .unwrap_or(c);
        if a[p][c] == 0.0 || !a[p][c].is_finite() {
            return Err(Error::Unsupported(
                "UniPC: singular coefficient system (repeated log-SNR values in the schedule)"
                    .into(),
            ));
        }
        a.swap(c, p);
        b.swap(c, p);
        for r in c + 1..k {
            let f = a[r][c] / a[c][c];
            let pivot = a[c].clone();
            for (v, pv) in a[r].iter_mut().zip(&pivot).skip(c) {
                *v -= f * pv;
            }
            b[r] -= f * b[c];
        }
    }
    let mut x = vec![0.0; k];
    for c in (0..k).rev() {
        let s: f64 = (c + 1..k).map(|j| a[c][j] * x[j]).sum();
        x[c] = (b[c] - s) / a[c][c];
    }
    Ok(x)
}

/// The shared pieces of UniP and UniC from s (newest history entry unless given) to t:
/// returns (r, c, φ₁, B(h), rks, R, b) for `order`.
#[allow(clippy::type_complexity)]
fn coefficients(
    pred: Prediction,
    s: &Point,
    prev: &[&Point],
    t: &Point,
    order: usize,
) -> (f64, f64, f64, f64, Vec<f64>, Vec<Vec<f64>>, Vec<f64>) {
    let h = t.lambda - s.lambda;
    let (r, c, hh) = expo(pred, s, t);
    let mut rks: Vec<f64> = prev.iter().map(|p| (p.lambda - s.lambda) / h).collect();
    rks.push(1.0);
    let h_phi_1 = hh.exp_m1();
    let b_h = hh.exp_m1();
    let mut h_phi_k = h_phi_1 / hh - 1.0;
    let mut factorial = 1.0;
    let mut rmat = Vec::with_capacity(order);
    let mut bvec = Vec::with_capacity(order);
    for i in 1..=order {
        rmat.push(
            rks.iter()
                .map(|rk| rk.powi(i as i32 - 1))
                .collect::<Vec<_>>(),
        );
        bvec.push(h_phi_k * factorial / b_h);
        factorial *= (i + 1) as f64;
        h_phi_k = h_phi_k / hh - 1.0 / factorial;
    }
    (r, c, h_phi_1, b_h, rks, rmat, bvec)
}

impl UniPc {
    /// UniP of order k from the newest history entry to `t`.
    fn predict(&self, hist: &History, x: &Tensor, t: &Point, k: usize) -> Result<Tensor> {
        let pred = self.prediction;
        let (s, m0) = hist
            .back(0)
            .ok_or_else(|| Error::Unsupported("UniPC step without a model output".into()))?;
        if to_clean(t) {
            return Ok(to_data(pred, x, m0, s)?.affine(t.alpha, 0.0)?);
        }
        let prev: Vec<&(Point, Tensor)> = (1..k).filter_map(|j| hist.back(j)).collect();
        let k = prev.len() + 1;
        let pts: Vec<&Point> = prev.iter().map(|e| &e.0).collect();
        let (r, c, phi1, b_h, rks, rmat, bvec) = coefficients(pred, s, &pts, t, k);
        let rhos: Vec<f64> = match k {
            1 => vec![],
            2 => vec![0.5],
            _ => {
                let sub: Vec<Vec<f64>> = rmat[..k - 1]
                    .iter()
                    .map(|row| row[..k - 1].to_vec())
                    .collect();
                solve(sub, bvec[..k - 1].to_vec())?
            }
        };
        // x_t = r x − c φ₁ m₀ − c B Σ ρ_j (m_j − m₀)/r_j
        let mut terms: Vec<(&Tensor, f64)> = vec![(x, r)];
        let mut c0 = -c * phi1;
        for (j, e) in prev.iter().enumerate() {
            let w = -c * b_h * rhos[j] / rks[j];
            terms.push((&e.1, w));
            c0 -= w;
        }
        terms.push((m0, c0));
        lin(&terms)
    }

    /// UniC of order k: corrects `x_pred` at `t` (model output `m_t` there) from the start
    /// `x_s` of the previous step, whose output is the newest history entry.
    fn correct(
        &self,
        hist: &History,
        x_s: &Tensor,
        t: &Point,
        m_t: &Tensor,
        k: usize,
    ) -> Result<Tensor> {
        let pred = self.prediction;
        let (s, m0) = hist
            .back(0)
            .ok_or_else(|| Error::Unsupported("UniC without a model output".into()))?;
        let prev: Vec<&(Point, Tensor)> = (1..k).filter_map(|j| hist.back(j)).collect();
        let k = prev.len() + 1;
        let pts: Vec<&Point> = prev.iter().map(|e| &e.0).collect();
        let (r, c, phi1, b_h, rks, rmat, bvec) = coefficients(pred, s, &pts, t, k);
        let rhos: Vec<f64> = if k == 1 {
            vec![0.5]
        } else {
            solve(rmat, bvec)?
        };
        let mut terms: Vec<(&Tensor, f64)> = vec![(x_s, r)];
        let mut c0 = -c * phi1;
        for (j, e) in prev.iter().enumerate() {
            let w = -c * b_h * rhos[j] / rks[j];
            terms.push((&e.1, w));
            c0 -= w;
        }
        let wt = -c * b_h * rhos[k - 1];
        terms.push((m_t, wt));
        c0 -= wt;
        terms.push((m0, c0));
        lin(&terms)
    }
}

impl<S: Sde + ?Sized> Step<S> for UniPc {
    type State = UniPcState;

    fn step<F: ScoreFn + ?Sized, N: NoiseSource + ?Sized>(
        &self,
        ctx: &StepCtx,
        sde: &S,
        score: &F,
        x: &Tensor,
        state: &mut UniPcState,
        _io: &mut StepIo<'_, N>,
    ) -> Result<Update> {
        let (s, t) = points(sde, ctx)?;
        let m = model_output(self.prediction, score, x, &s)?;
        let x = match (&state.last, self.corrector) {
            (Some(x_prev), true) => self.correct(&state.hist, x_prev, &s, &m, state.last_order)?,
            _ => x.clone(),
        };
        state.hist.push(s, m, self.order);
        let k = step_order(self.order, state.hist.len(), ctx, self.lower_order_final);
        let x_next = self.predict(&state.hist, &x, &t, k)?;
        state.last = Some(x);
        state.last_order = k;
        Ok(deterministic(x_next))
    }

    /// Tweedie's x̂₀ at the last time (one evaluation).
    fn denoise<F: ScoreFn + ?Sized>(
        &self,
        ctx: &StepCtx,
        sde: &S,
        score: &F,
        last: Update,
        _state: &mut UniPcState,
    ) -> Result<Tensor> {
        tweedie(sde, score, &last.x, ctx.t_next)
    }
}
