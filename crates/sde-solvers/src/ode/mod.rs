//! ODE integrators on candle tensors for the probability-flow ODE and the likelihood:
//! adaptive Dormand–Prince [`Rk45`] (scipy-compatible or per-sample error control) and the
//! fixed-step [`FixedStep`] methods (Euler, Heun, Dormand–Prince 5 without error control).
//!
//! Right-hand sides implement [`OdeRhs`]: `F(x, t)` with the argument order `(x, t)` used
//! everywhere in scoresde-rs (scipy's `fun(t, y)` takes them the other way round), `x: [B, ...]`
//! and `t: [B]` (one time per sample) in the state's dtype. Closures
//! `Fn(&Tensor, &Tensor) -> sde_solvers::Result<Tensor>` implement it.

use candle_core::Tensor;

use crate::error::Result;

mod fixed;
mod rk45;
pub mod tableau;

pub use fixed::{FixedStep, FixedStepMethod};
pub use rk45::{ErrorNorm, Rk45, Rk45Options};

/// The right-hand side F of dx/dt = F(x, t): `x: [B, ...]`, `t: [B]` → `[B, ...]`.
///
/// Note the order `(x, t)`; scipy's `solve_ivp` calls `fun(t, y)`.
pub trait OdeRhs {
    /// F(x, t).
    fn eval(&self, x: &Tensor, t: &Tensor) -> Result<Tensor>;
}

impl<F: Fn(&Tensor, &Tensor) -> Result<Tensor>> OdeRhs for F {
    fn eval(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        self(x, t)
    }
}

/// What an ODE solve returns (diffsol's solution / argmin's state, kept apart from the options).
#[derive(Debug, Clone)]
pub struct OdeSolution {
    /// x(t1), in the state's dtype and on its device.
    pub x: Tensor,
    /// Number of right-hand-side evaluations on the batch (`nfe`, scipy's `nfev`).
    pub nfe: usize,
    /// Accepted steps (summed over samples with [`ErrorNorm::PerSample`]).
    pub n_accepted: usize,
    /// Rejected step attempts (summed over samples with [`ErrorNorm::PerSample`]).
    pub n_rejected: usize,
}

/// Which integrator an ODE sampler or the likelihood uses.
#[derive(Debug, Clone, PartialEq)]
pub enum OdeMethod {
    /// Adaptive Dormand–Prince RK45 (`method='RK45'` in the reference), the default.
    Rk45(Rk45Options),
    /// A fixed number of equal steps of a cheap method.
    Fixed(FixedStep),
}

impl Default for OdeMethod {
    fn default() -> Self {
        OdeMethod::Rk45(Rk45Options::default())
    }
}

impl OdeMethod {
    /// Checks the method's options.
    pub fn validate(&self) -> Result<()> {
        match self {
            OdeMethod::Rk45(o) => o.validate(),
            OdeMethod::Fixed(f) => FixedStep::new(f.method, f.n_steps).map(|_| ()),
        }
    }

    /// Integrates dx/dt = `rhs(x, t)` from `x(t0) = x0` to `t1`.
    pub fn solve<R: OdeRhs + ?Sized>(
        &self,
        rhs: &R,
        x0: &Tensor,
        t0: f64,
        t1: f64,
    ) -> Result<OdeSolution> {
        match self {
            OdeMethod::Rk45(o) => Rk45::new(o.clone())?.solve(rhs, x0, t0, t1),
            OdeMethod::Fixed(f) => f.solve(rhs, x0, t0, t1),
        }
    }
}
