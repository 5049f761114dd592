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
pub(crate) use rk45::row_sums;
pub use rk45::{ErrorNorm, Rk45, Rk45Options};

/// The right-hand side F of dx/dt = F(x, t): `x: [B, ...]`, `t: [B]` → `[B, ...]`.
///
/// Note the order `(x, t)`; scipy's `solve_ivp` calls `fun(t, y)`.
pub trait OdeRhs {
    /// F(x, t).
    fn eval(&self, x: &Tensor, t: &Tensor) -> Result<Tensor>;

    /// F on a subset of the batch: row j of `x` is row `rows[j]` of the original batch
    /// (`rows: [B']`, `u32`). Called instead of [`eval`](Self::eval) by the per-sample RK45 once
    /// it has dropped finished samples, only when [`supports_rows`](Self::supports_rows) is
    /// true. Default: [`eval`](Self::eval) (right for a row-independent F).
    fn eval_rows(&self, x: &Tensor, t: &Tensor, rows: &Tensor) -> Result<Tensor> {
        let _ = rows;
        self.eval(x, t)
    }

    /// Whether row b of F depends only on row b of `x` and `t` (and on per-sample data that
    /// [`eval_rows`](Self::eval_rows) selects), so that the batch can shrink. Default `false`:
    /// a closure may couple samples or hold per-sample data.
    fn supports_rows(&self) -> bool {
        false
    }
}

impl<F: Fn(&Tensor, &Tensor) -> Result<Tensor>> OdeRhs for F {
    fn eval(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        self(x, t)
    }
}

/// Marks a closure F(x, t) as row-independent (each sample's derivative depends only on that
/// sample), so that [`ErrorNorm::PerSample`] RK45 may drop finished samples from the batch.
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use sde_solvers::ode::{ErrorNorm, Rk45, Rk45Options, Rowwise};
/// let decay = Rowwise(|x: &Tensor, _t: &Tensor| -> sde_solvers::Result<Tensor> { Ok(x.neg()?) });
/// let x0 = Tensor::new(&[[1.0f64], [2.0]], &Device::Cpu)?;
/// let opts = Rk45Options { error_norm: ErrorNorm::PerSample, ..Default::default() };
/// let sol = Rk45::new(opts)?.solve(&decay, &x0, 0.0, 1.0)?;
/// # Ok::<(), sde_solvers::Error>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Rowwise<F>(pub F);

impl<F: Fn(&Tensor, &Tensor) -> Result<Tensor>> OdeRhs for Rowwise<F> {
    fn eval(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        (self.0)(x, t)
    }
    fn supports_rows(&self) -> bool {
        true
    }
}

/// What an ODE solve returns (diffsol's solution / argmin's state, kept apart from the options).
#[derive(Debug, Clone)]
pub struct OdeSolution {
    /// x(t1), in the state's dtype and on its device.
    pub x: Tensor,
    /// Number of right-hand-side evaluations on the batch (`nfe`, scipy's `nfev`).
    #[doc(alias = "nfev")]
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
