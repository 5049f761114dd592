//! Fixed-step explicit Runge–Kutta integrators: Euler, Heun and the 5th-order Dormand–Prince
//! solution without error control.

use candle_core::Tensor;

use super::tableau::{A, B, C, N_STAGES};
use super::{OdeRhs, OdeSolution};
use crate::error::{Error, Result};

/// A fixed-step explicit method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FixedStepMethod {
    /// Forward Euler, order 1: x_{n+1} = x_n + h F(x_n, t_n). One evaluation per step.
    Euler,
    /// Heun's method (explicit trapezoid), order 2: k₁ = F(x_n, t_n),
    /// k₂ = F(x_n + h k₁, t_n + h), x_{n+1} = x_n + h (k₁ + k₂)/2. Two evaluations per step.
    Heun,
    /// The 5th-order Dormand–Prince solution x_{n+1} = x_n + h Σ b_i k_i with a constant step
    /// (no error control). Six evaluations per step.
    DormandPrince5,
}

/// Integrates dx/dt = F(x, t) with `n_steps` equal steps of a [`FixedStepMethod`]: cheap,
/// predictable cost (NFE = `n_steps` × stages), no error control.
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use sde_solvers::ode::{FixedStep, FixedStepMethod};
/// let rhs = |x: &Tensor, _t: &Tensor| -> sde_solvers::Result<Tensor> { Ok(x.neg()?) };
/// let x0 = Tensor::ones((1, 1), DType::F64, &Device::Cpu)?;
/// let sol = FixedStep::new(FixedStepMethod::Heun, 100)?.solve(&rhs, &x0, 0.0, 1.0)?;
/// assert_eq!(sol.nfe, 200);
/// let x1 = sol.x.flatten_all()?.to_vec1::<f64>()?[0];
/// assert!((x1 - (-1f64).exp()).abs() < 1e-4);
/// # Ok::<(), sde_solvers::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedStep {
    /// The method.
    pub method: FixedStepMethod,
    /// Number of equal steps from t0 to t1.
    pub n_steps: usize,
}

impl FixedStep {
    /// `n_steps ≥ 1` equal steps of `method`.
    pub fn new(method: FixedStepMethod, n_steps: usize) -> Result<Self> {
        if n_steps == 0 {
            return Err(Error::InvalidParameter {
                name: "n_steps",
                value: 0.0,
                reason: "must be at least 1",
            });
        }
        Ok(Self { method, n_steps })
    }

    /// Evaluations of the right-hand side per step.
    pub fn evals_per_step(&self) -> usize {
        match self.method {
            FixedStepMethod::Euler => 1,
            FixedStepMethod::Heun => 2,
            FixedStepMethod::DormandPrince5 => N_STAGES,
        }
    }

    /// Integrates from `x(t0) = x0` to `t1` with steps h = (t1 − t0)/`n_steps` (forwards or
    /// backwards). `rhs` takes `(x, t)` with `t: [B]` in `x0`'s dtype. Checks the state for
    /// NaN/∞ after every step ([`Error::NonFinite`]). `x0` must be a float tensor of rank ≥ 1
    /// ([`sde_core::Error::DType`] as [`Error::Core`], [`Error::ShapeMismatch`]).
    pub fn solve<R: OdeRhs + ?Sized>(
        &self,
        rhs: &R,
        x0: &Tensor,
        t0: f64,
        t1: f64,
    ) -> Result<OdeSolution> {
        if self.n_steps == 0 {
            return Err(Error::InvalidParameter {
                name: "n_steps",
                value: 0.0,
                reason: "must be at least 1",
            });
        }
        if !(t0.is_finite() && t1.is_finite()) {
            return Err(Error::InvalidParameter {
                name: "t1",
                value: if t0.is_finite() { t1 } else { t0 },
                reason: "integration bounds must be finite",
            });
        }
        if x0.rank() == 0 {
            return Err(Error::ShapeMismatch {
                what: "FixedStep::solve initial state x0",
                expected: "[B, ...] (rank >= 1)".into(),
                got: "a scalar (shape [])".into(),
            });
        }
        sde_core::check_float("FixedStep::solve", "x0", x0)?;
        let batch = x0.dim(0)?;
        let (dtype, dev) = (x0.dtype(), x0.device().clone());
        let h = (t1 - t0) / self.n_steps as f64;
        let mut nfe = 0usize;
        let mut eval = |x: &Tensor, t: f64| -> Result<Tensor> {
            nfe += 1;
            let tt = sde_core::time_tensor(t, batch, &dev, dtype)?;
            let k = rhs.eval(x, &tt)?;
            if k.shape() != x.shape() {
                return Err(Error::ShapeMismatch {
                    what: "ODE right-hand side",
                    expected: format!("{:?}", x.dims()),
                    got: format!("{:?}", k.dims()),
                });
            }
            Ok(k.to_dtype(dtype)?)
        };
        let mut x = x0.clone();
        for n in 0..self.n_steps {
            let t = t0 + n as f64 * h;
            x = match self.method {
                FixedStepMethod::Euler => (&x + eval(&x, t)?.affine(h, 0.0)?)?,
                FixedStepMethod::Heun => {
                    let k1 = eval(&x, t)?;
                    let k2 = eval(&(&x + k1.affine(h, 0.0)?)?, t + h)?;
                    (&x + (k1 + k2)?.affine(0.5 * h, 0.0)?)?
                }
                FixedStepMethod::DormandPrince5 => {
                    let mut ks: Vec<Tensor> = Vec::with_capacity(N_STAGES);
                    ks.push(eval(&x, t)?);
                    for s in 1..N_STAGES {
                        let dy = super::rk45::comb(&ks, &A[s][..s])?.affine(h, 0.0)?;
                        let k = eval(&(&x + dy)?, t + C[s] * h)?;
                        ks.push(k);
                    }
                    (&x + super::rk45::comb(&ks, &B)?.affine(h, 0.0)?)?
                }
            };
            let t_next = t0 + (n + 1) as f64 * h;
            sde_core::ensure_finite(&x, String::new).map_err(|_| Error::NonFinite {
                what: format!("ODE state after a {:?} step", self.method),
                step: n + 1,
                t: t_next,
            })?;
        }
        Ok(OdeSolution {
            x,
            nfe,
            n_accepted: self.n_steps,
            n_rejected: 0,
        })
    }
}
