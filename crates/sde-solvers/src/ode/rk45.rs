//! Adaptive Dormand–Prince RK45 on candle tensors, with scipy's step-size control.

use candle_core::{DType, Tensor};

use super::tableau::{A, B, C, E, ERROR_ESTIMATOR_ORDER, N_STAGES};
use super::{OdeRhs, OdeSolution};
use crate::error::{Error, Result};

/// Safety factor of the step-size update (`SAFETY` in scipy's `rk.py`).
const SAFETY: f64 = 0.9;
/// Smallest factor a step may shrink by after a rejection (`MIN_FACTOR`).
const MIN_FACTOR: f64 = 0.2;
/// Largest factor a step may grow by after an acceptance (`MAX_FACTOR`).
const MAX_FACTOR: f64 = 10.0;

/// How the embedded error estimate e is reduced to the number that accepts or rejects a step.
///
/// Both use the scaled RMS norm ‖e‖ = √(mean_i (e_i / sc_i)²) with
/// sc_i = atol + rtol · max(|x_i|, |x̃_i|) (x the state before, x̃ after the step); a step is
/// accepted when ‖e‖ < 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorNorm {
    /// One norm over the whole batch, one time and one step size for all samples: exactly
    /// scipy's `solve_ivp(method="RK45")` on the flattened state, as the reference's
    /// `get_ode_sampler` / `get_likelihood_fn` use it, so the NFE matches the reference.
    /// Step sizes then depend on the whole batch.
    #[default]
    Batch,
    /// One norm, one time and one step size per sample (the mean runs over that sample's
    /// elements only): a hard sample does not shrink every other sample's steps, and a sample's
    /// result does not depend on the rest of the batch. Every right-hand-side call still
    /// evaluates the whole batch (finished samples with a zero step).
    PerSample,
}

/// Options of [`Rk45`] (scipy's `solve_ivp` arguments). Defaults: `rtol = atol = 1e-5` (as in
/// `get_ode_sampler` and `get_likelihood_fn`), `max_steps = 10_000`, `first_step = None`
/// (scipy's `select_initial_step`), `max_step = ∞`, [`ErrorNorm::Batch`].
/// ```
/// use sde_solvers::ode::Rk45Options;
/// let opts = Rk45Options { rtol: 1e-3, ..Default::default() };
/// assert_eq!(opts.atol, 1e-5);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Rk45Options {
    /// Relative tolerance (`rtol`), at least 100 · f64::EPSILON (scipy raises it to that).
    pub rtol: f64,
    /// Absolute tolerance (`atol`), ≥ 0.
    pub atol: f64,
    /// Largest number of step attempts (accepted + rejected) before [`Error::MaxSteps`].
    pub max_steps: usize,
    /// First step size |h₀| (`first_step`); `None` picks it with scipy's rule (Hairer's
    /// `select_initial_step`, one extra right-hand-side evaluation).
    pub first_step: Option<f64>,
    /// Largest step size |h| (`max_step`), ∞ by default.
    pub max_step: f64,
    /// Batch-wide (scipy-compatible) or per-sample error control.
    pub error_norm: ErrorNorm,
}

impl Default for Rk45Options {
    fn default() -> Self {
        Self {
            rtol: 1e-5,
            atol: 1e-5,
            max_steps: 10_000,
            first_step: None,
            max_step: f64::INFINITY,
            error_norm: ErrorNorm::Batch,
        }
    }
}

impl Rk45Options {
    /// Checks every option: `rtol ≥ 100 ε`, `atol ≥ 0`, both finite, `max_steps ≥ 1`,
    /// `first_step > 0`, `max_step > 0`.
    pub fn validate(&self) -> Result<()> {
        let bad = |name: &'static str, value: f64, reason: &'static str| {
            Err(Error::InvalidParameter {
                name,
                value,
                reason,
            })
        };
        if !(self.rtol.is_finite() && self.rtol >= 100.0 * f64::EPSILON) {
            return bad(
                "rtol",
                self.rtol,
                "must be finite and >= 100 * f64::EPSILON",
            );
        }
        if !(self.atol.is_finite() && self.atol >= 0.0) {
            return bad("atol", self.atol, "must be finite and >= 0");
        }
        if self.max_steps == 0 {
            return bad("max_steps", 0.0, "must be at least 1");
        }
        if let Some(h) = self.first_step {
            if !(h.is_finite() && h > 0.0) {
                return bad("first_step", h, "must be finite and > 0");
            }
        }
        if self.max_step.is_nan() || self.max_step <= 0.0 {
            return bad("max_step", self.max_step, "must be > 0");
        }
        Ok(())
    }
}

/// Adaptive explicit Runge–Kutta 5(4) of Dormand and Prince (`RK45`, Hairer's DOPRI5) for
/// dx/dt = F(x, t), on candle tensors on the state's device.
///
/// One step from (x, t) with step h: k_i = F(x + h Σ_j a_ij k_j, t + c_i h) for six stages,
/// x̃ = x + h Σ b_i k_i (5th order), k_7 = F(x̃, t + h) (reused as the next k_1), error
/// estimate e = h Σ_{i≤7} e_i k_i (5th minus embedded 4th order). With the scaled RMS norm
/// ‖e‖ of [`ErrorNorm`], a step is accepted when ‖e‖ < 1, and the next step size is
/// |h| · min(10, 0.9 ‖e‖^{−1/5}) (no growth right after a rejection); a rejected step is retried
/// with |h| · max(0.2, 0.9 ‖e‖^{−1/5}). This is scipy's `RK45._step_impl` step for step, so with
/// [`ErrorNorm::Batch`] the number of right-hand-side evaluations (`nfev`) is the reference's:
/// 2 + 6 × (step attempts) with the automatic first step.
///
/// Only per-step scalars (the error norms, one per sample in [`ErrorNorm::PerSample`] mode)
/// travel to the host; the state stays on its device. In per-sample mode, a right-hand side that
/// works row by row ([`OdeRhs::supports_rows`], e.g. [`Rowwise`](super::Rowwise)) lets the
/// solver drop finished samples from the batch, so the cost follows each sample's own steps. The right-hand side takes `(x, t)` in that
/// order (scipy's `fun` takes `(t, y)`), with `t: [B]` in the state's dtype.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use sde_solvers::ode::{Rk45, Rk45Options};
/// // dx/dt = −x from x(0) = 1: x(1) = e^{−1}.
/// let rhs = |x: &Tensor, _t: &Tensor| -> sde_solvers::Result<Tensor> { Ok(x.neg()?) };
/// let x0 = Tensor::ones((1, 1), DType::F64, &Device::Cpu)?;
/// let sol = Rk45::new(Rk45Options { rtol: 1e-8, atol: 1e-10, ..Default::default() })?
///     .solve(&rhs, &x0, 0.0, 1.0)?;
/// let x1 = sol.x.flatten_all()?.to_vec1::<f64>()?[0];
/// assert!((x1 - (-1f64).exp()).abs() < 1e-8);
/// # Ok::<(), sde_solvers::Error>(())
/// ```
#[doc(alias = "RK45")]
#[doc(alias = "dopri5")]
#[derive(Debug, Clone, PartialEq)]
pub struct Rk45 {
    opts: Rk45Options,
}

/// Per-group step sizes, expanded to samples on demand.
struct Layout {
    batch: usize,
    per_sample: bool,
    /// Elements per group: the whole state (batch mode) or one sample.
    group_numel: f64,
    rank: usize,
}

impl Layout {
    fn n_groups(&self) -> usize {
        if self.per_sample {
            self.batch
        } else {
            1
        }
    }

    /// h ⊙ x with one factor per group.
    fn hmul(&self, x: &Tensor, h: &[f64]) -> Result<Tensor> {
        if !self.per_sample {
            return Ok(x.affine(h[0], 0.0)?);
        }
        let mut shape = vec![1usize; self.rank];
        shape[0] = self.batch;
        let hv = Tensor::from_vec(h.to_vec(), self.batch, &candle_core::Device::Cpu)?
            .to_dtype(x.dtype())?
            .to_device(x.device())?
            .reshape(shape)?;
        Ok(x.broadcast_mul(&hv)?)
    }

    /// Time tensor `[B]` from per-group times.
    fn times(&self, t: &[f64], dtype: DType, dev: &candle_core::Device) -> Result<Tensor> {
        let v = if self.per_sample {
            t.to_vec()
        } else {
            vec![t[0]; self.batch]
        };
        Ok(sde_core::from_host_f64(v, dev, dtype)?)
    }

    /// Scaled RMS norm √(mean (x/scale)²) per group, in float32 at least: in half precision
    /// x/scale overflows at the default tolerances (1/atol = 1e5 > f16::MAX).
    fn rms(&self, x: &Tensor, scale: &Tensor) -> Result<Vec<f64>> {
        let q = match x.dtype() {
            DType::F16 | DType::BF16 => (x.to_dtype(DType::F32)? / scale.to_dtype(DType::F32)?)?,
            _ => (x / scale)?,
        }
        .sqr()?;
        if !self.per_sample {
            let ss = q.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            return Ok(vec![(ss / self.group_numel).sqrt()]);
        }
        let ss = sde_core::to_host_f64(&row_sums(&q)?)?;
        Ok(ss.iter().map(|s| (s / self.group_numel).sqrt()).collect())
    }
}

/// Per-sample sums Σ_j x_bj of `x: [B, ...]` → `[B]`, as one matrix–vector product with a
/// vector of ones (candle's reduction makes one call per row, slow for short rows).
pub(crate) fn row_sums(x: &Tensor) -> Result<Tensor> {
    let b = x.dim(0)?;
    let n = x.elem_count() / b.max(1);
    if x.rank() <= 1 || n == 1 {
        return Ok(x.reshape(b)?);
    }
    let ones = Tensor::ones((n, 1), x.dtype(), x.device())?;
    Ok(x.reshape((b, n))?.matmul(&ones)?.reshape(b)?)
}

/// A `u32` index tensor on `dev`.
fn index_tensor(idx: &[usize], dev: &candle_core::Device) -> Result<Tensor> {
    let v: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
    let n = v.len();
    Ok(Tensor::from_vec(v, n, &candle_core::Device::Cpu)?.to_device(dev)?)
}

/// Σ_j c_j k_j over the nonzero coefficients.
pub(crate) fn comb(ks: &[Tensor], coeffs: &[f64]) -> Result<Tensor> {
    let mut acc: Option<Tensor> = None;
    for (k, &c) in ks.iter().zip(coeffs) {
        if c == 0.0 {
            continue;
        }
        let term = k.affine(c, 0.0)?;
        acc = Some(match acc {
            None => term,
            Some(a) => (a + term)?,
        });
    }
    match acc {
        Some(a) => Ok(a),
        None => Ok(ks
            .first()
            .ok_or_else(|| Error::Unsupported("empty stage list".into()))?
            .zeros_like()?),
    }
}

/// The distance from `t` to the next representable f64 towards `dir`.
fn spacing(t: f64, dir: f64) -> f64 {
    let next = if t == 0.0 {
        f64::from_bits(1).copysign(dir)
    } else {
        let bits = t.to_bits();
        let away = (t > 0.0) == (dir > 0.0);
        f64::from_bits(if away { bits + 1 } else { bits - 1 })
    };
    (next - t).abs()
}

impl Rk45 {
    /// A solver with validated options (see [`Rk45Options::validate`]).
    pub fn new(opts: Rk45Options) -> Result<Self> {
        opts.validate()?;
        Ok(Self { opts })
    }

    /// The options in use.
    pub fn options(&self) -> &Rk45Options {
        &self.opts
    }

    /// Integrates dx/dt = `rhs(x, t)` from `x(t0) = x0` to `t1` (forwards or backwards in time).
    ///
    /// `x0: [B, ...]` (the batch is the first dimension; a rank-1 `x0` is `B` scalar samples).
    /// Returns x(t1) with the number of `rhs` calls and of accepted / rejected step attempts
    /// (in [`ErrorNorm::PerSample`] mode, summed over samples).
    ///
    /// Errors: [`Error::NonFinite`] when the state or the right-hand side stops being finite,
    /// [`Error::MaxSteps`] after `max_steps` attempts, [`Error::StepSizeTooSmall`] when the step
    /// falls below 10 ulp of t, [`Error::ShapeMismatch`] when `rhs` changes the shape or `x0` is
    /// a scalar, [`sde_core::Error::DType`] (as [`Error::Core`]) for an integer `x0`. An empty
    /// batch or `t0 == t1` returns `x0` with no evaluation.
    #[doc(alias = "solve_ivp")]
    pub fn solve<R: OdeRhs + ?Sized>(
        &self,
        rhs: &R,
        x0: &Tensor,
        t0: f64,
        t1: f64,
    ) -> Result<OdeSolution> {
        let o = &self.opts;
        if !t0.is_finite() {
            return Err(Error::InvalidParameter {
                name: "t0",
                value: t0,
                reason: "must be finite",
            });
        }
        if !t1.is_finite() {
            return Err(Error::InvalidParameter {
                name: "t1",
                value: t1,
                reason: "must be finite",
            });
        }
        if x0.rank() == 0 {
            return Err(Error::ShapeMismatch {
                what: "Rk45::solve initial state x0",
                expected: "[B, ...] (rank >= 1)".into(),
                got: "a scalar (shape [])".into(),
            });
        }
        sde_core::check_float("Rk45::solve", "x0", x0)?;
        let batch = x0.dim(0)?;
        if t0 == t1 || x0.elem_count() == 0 {
            return Ok(OdeSolution {
                x: x0.clone(),
                nfe: 0,
                n_accepted: 0,
                n_rejected: 0,
            });
        }
        let per_sample = o.error_norm == ErrorNorm::PerSample;
        let mut lay = Layout {
            batch,
            per_sample,
            group_numel: if per_sample {
                (x0.elem_count() / batch) as f64
            } else {
                x0.elem_count() as f64
            },
            rank: x0.rank(),
        };
        let g = lay.n_groups();
        let dir = if t1 > t0 { 1.0 } else { -1.0 };
        let interval = (t1 - t0).abs();
        let (dtype, dev) = (x0.dtype(), x0.device().clone());
        // Per-sample mode drops finished samples from the batch when the right-hand side allows
        // it: `rows` maps working rows to the caller's batch positions.
        let compact = per_sample && rhs.supports_rows();
        let mut rows: Vec<usize> = (0..batch).collect();
        let mut rows_t: Option<Tensor> = if compact {
            Some(index_tensor(&rows, &dev)?)
        } else {
            None
        };
        let mut finished: Vec<(Vec<usize>, Tensor)> = Vec::new();
        let mut nfe = 0usize;
        let eval = |x: &Tensor,
                    t: &[f64],
                    lay: &Layout,
                    rows_t: Option<&Tensor>,
                    nfe: &mut usize|
         -> Result<Tensor> {
            *nfe += 1;
            let tt = lay.times(t, dtype, &dev)?;
            let k = match rows_t {
                Some(r) => rhs.eval_rows(x, &tt, r)?,
                None => rhs.eval(x, &tt)?,
            };
            if k.shape() != x.shape() {
                return Err(Error::ShapeMismatch {
                    what: "ODE right-hand side",
                    expected: format!("{:?}", x.dims()),
                    got: format!("{:?}", k.dims()),
                });
            }
            Ok(k.to_dtype(dtype)?)
        };
        let non_finite = |what: &str, step: usize, t: f64| Error::NonFinite {
            what: what.to_string(),
            step,
            t,
        };

        let mut y = x0.clone();
        let mut t = vec![t0; g];
        let mut f = eval(&y, &t, &lay, rows_t.as_ref(), &mut nfe)?;

        // Initial step: scipy's `select_initial_step` (Hairer, Nørsett & Wanner, II.4).
        let mut h_abs: Vec<f64> = match o.first_step {
            Some(h) if h > interval => {
                return Err(Error::InvalidParameter {
                    name: "first_step",
                    value: h,
                    reason: "must not exceed |t1 - t0|",
                })
            }
            Some(h) => vec![h; g],
            None => {
                let scale = y.abs()?.affine(o.rtol, o.atol)?;
                let d0 = lay.rms(&y, &scale)?;
                let d1 = lay.rms(&f, &scale)?;
                let h0: Vec<f64> = d0
                    .iter()
                    .zip(&d1)
                    .map(|(&d0, &d1)| {
                        let h = if d0 < 1e-5 || d1 < 1e-5 {
                            1e-6
                        } else {
                            0.01 * d0 / d1
                        };
                        h.min(interval)
                    })
                    .collect();
                if d0.iter().chain(&d1).any(|d| !d.is_finite()) {
                    return Err(non_finite("initial state or right-hand side", 0, t0));
                }
                let y1 = (&y + lay.hmul(&f, &h0.iter().map(|h| h * dir).collect::<Vec<_>>())?)?;
                let t_1: Vec<f64> = h0.iter().map(|h| t0 + h * dir).collect();
                let f1 = eval(&y1, &t_1, &lay, rows_t.as_ref(), &mut nfe)?;
                let d2 = lay.rms(&(&f1 - &f)?, &scale)?;
                let mut out = Vec::with_capacity(g);
                for i in 0..g {
                    let d2 = d2[i] / h0[i];
                    if !d2.is_finite() {
                        return Err(non_finite("right-hand side at the first trial step", 0, t0));
                    }
                    let h1 = if d1[i] <= 1e-15 && d2 <= 1e-15 {
                        (h0[i] * 1e-3).max(1e-6)
                    } else {
                        (0.01 / d1[i].max(d2)).powf(1.0 / (ERROR_ESTIMATOR_ORDER + 1) as f64)
                    };
                    out.push((100.0 * h0[i]).min(h1).min(interval).min(o.max_step));
                }
                out
            }
        };

        let exponent = -1.0 / (ERROR_ESTIMATOR_ORDER + 1) as f64;
        let mut done = vec![false; g];
        let mut fresh = vec![true; g];
        let mut rejected = vec![false; g];
        let (mut n_accepted, mut n_rejected) = (0usize, 0usize);
        let mut attempts = 0usize;
        while done.iter().any(|d| !d) {
            let g = lay.n_groups();
            if attempts >= o.max_steps {
                let tt = (0..g).find(|&i| !done[i]).map_or(t1, |i| t[i]);
                return Err(Error::MaxSteps {
                    max_steps: o.max_steps,
                    t: tt,
                });
            }
            attempts += 1;
            // Step sizes of this attempt (0 for finished groups).
            let mut h = vec![0.0; g];
            let mut t_new = t.clone();
            for i in 0..g {
                if done[i] {
                    continue;
                }
                let min_step = 10.0 * spacing(t[i], dir);
                if fresh[i] {
                    if h_abs[i] > o.max_step {
                        h_abs[i] = o.max_step;
                    } else if h_abs[i] < min_step {
                        h_abs[i] = min_step;
                    }
                }
                if h_abs[i] < min_step {
                    return Err(Error::StepSizeTooSmall {
                        h: h_abs[i],
                        t: t[i],
                    });
                }
                let mut tn = t[i] + h_abs[i] * dir;
                if dir * (tn - t1) > 0.0 {
                    tn = t1;
                }
                h[i] = tn - t[i];
                h_abs[i] = h[i].abs();
                t_new[i] = tn;
            }

            // One Dormand–Prince step (scipy's `rk_step`).
            let mut ks: Vec<Tensor> = Vec::with_capacity(N_STAGES + 1);
            ks.push(f.clone());
            for s in 1..N_STAGES {
                let dy = lay.hmul(&comb(&ks, &A[s][..s])?, &h)?;
                let ts: Vec<f64> = (0..g).map(|i| t[i] + C[s] * h[i]).collect();
                let k = eval(&(&y + dy)?, &ts, &lay, rows_t.as_ref(), &mut nfe)?;
                ks.push(k);
            }
            let y_new = (&y + lay.hmul(&comb(&ks, &B)?, &h)?)?;
            let t_end: Vec<f64> = (0..g).map(|i| t[i] + h[i]).collect();
            let f_new = eval(&y_new, &t_end, &lay, rows_t.as_ref(), &mut nfe)?;
            ks.push(f_new.clone());
            let err = lay.hmul(&comb(&ks, &E)?, &h)?;
            let scale = y.abs()?.maximum(&y_new.abs()?)?.affine(o.rtol, o.atol)?;
            let norms = lay.rms(&err, &scale)?;

            let mut accept = vec![true; g];
            for i in 0..g {
                if done[i] {
                    continue;
                }
                let en = norms[i];
                if !en.is_finite() {
                    return Err(non_finite(
                        "RK45 step (state or right-hand side)",
                        attempts,
                        t[i],
                    ));
                }
                if en < 1.0 {
                    let mut factor = if en == 0.0 {
                        MAX_FACTOR
                    } else {
                        MAX_FACTOR.min(SAFETY * en.powf(exponent))
                    };
                    if rejected[i] {
                        factor = factor.min(1.0);
                    }
                    h_abs[i] *= factor;
                    t[i] = t_new[i];
                    rejected[i] = false;
                    fresh[i] = true;
                    n_accepted += 1;
                    if dir * (t[i] - t1) >= 0.0 {
                        done[i] = true;
                    }
                } else {
                    h_abs[i] *= MIN_FACTOR.max(SAFETY * en.powf(exponent));
                    rejected[i] = true;
                    fresh[i] = false;
                    accept[i] = false;
                    n_rejected += 1;
                }
            }
            if accept.iter().all(|&a| a) {
                y = y_new;
                f = f_new;
            } else if accept.iter().any(|&a| a) {
                // Per-sample mode with a mix of accepted and rejected samples.
                let mask: Vec<u8> = accept.iter().map(|&a| u8::from(a)).collect();
                let mut shape = vec![1usize; lay.rank];
                shape[0] = lay.batch;
                let mask = Tensor::from_vec(mask, lay.batch, &candle_core::Device::Cpu)?
                    .to_device(y.device())?
                    .reshape(shape)?
                    .broadcast_as(y.shape())?;
                y = mask.where_cond(&y_new, &y)?;
                f = mask.where_cond(&f_new, &f)?;
            }
            // Drop finished samples once they are at least a tenth of the working batch.
            let n_done = done.iter().filter(|&&d| d).count();
            if compact && n_done > 0 && (n_done == g || 10 * n_done >= g) {
                let (gone, keep): (Vec<usize>, Vec<usize>) = (0..g).partition(|&i| done[i]);
                let gone_t = index_tensor(&gone, &dev)?;
                finished.push((
                    gone.iter().map(|&i| rows[i]).collect(),
                    y.index_select(&gone_t, 0)?,
                ));
                if keep.is_empty() {
                    break;
                }
                let keep_t = index_tensor(&keep, &dev)?;
                y = y.index_select(&keep_t, 0)?;
                f = f.index_select(&keep_t, 0)?;
                let pick = |v: &[f64]| keep.iter().map(|&i| v[i]).collect::<Vec<f64>>();
                t = pick(&t);
                h_abs = pick(&h_abs);
                fresh = keep.iter().map(|&i| fresh[i]).collect();
                rejected = keep.iter().map(|&i| rejected[i]).collect();
                done = vec![false; keep.len()];
                rows = keep.iter().map(|&i| rows[i]).collect();
                rows_t = Some(index_tensor(&rows, &dev)?);
                lay.batch = keep.len();
            }
        }
        if compact {
            // Put the finished pieces back in the caller's order.
            if !done.iter().all(|&d| d) || finished.is_empty() {
                finished.push((rows.clone(), y));
            }
            let mut order = Vec::with_capacity(batch);
            let mut parts = Vec::with_capacity(finished.len());
            for (idx, part) in finished {
                order.extend(idx);
                parts.push(part);
            }
            let mut inverse = vec![0usize; batch];
            for (pos, &orig) in order.iter().enumerate() {
                if let Some(slot) = inverse.get_mut(orig) {
                    *slot = pos;
                }
            }
            y = Tensor::cat(&parts, 0)?.index_select(&index_tensor(&inverse, &dev)?, 0)?;
        }
        Ok(OdeSolution {
            x: y,
            nfe,
            n_accepted,
            n_rejected,
        })
    }
}
