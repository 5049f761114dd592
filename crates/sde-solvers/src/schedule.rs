//! Time schedules: the grid a sampler walks from t = T down to its last time, as data.
//!
//! A [`Schedule`] and a step count n (owned by the sampler, not by the SDE: [`Sde::n`] keeps its
//! model meaning, the discrete tables and labels) give n + 1 boundary times
//! T = t_0 > t_1 > … > t_n; step i goes from t_i to t_{i+1}.

use candle_core::DType;
use sde_core::Sde;

use crate::error::{Error, Result};
use crate::pc::time_grid;

/// Where a sampler's n steps lie in time (the value a sampler owns; see the module doc).
///
/// | variant | times t_0 = T > … > t_n |
/// |---|---|
/// | `Reference { sampling_eps }` | t_i = `linspace(T, ε, n)`_i for i < n (the reference's `timesteps`, bit-exact, [`time_grid`]), then t_n = 0 |
/// | `Karras { sigma_min, sigma_max, rho }` | EDM's ρ-schedule in σ̃ = σ(t)/α(t) = e^{−λ}: σ̃_i = (σ̃_max^{1/ρ} + i/n (σ̃_min^{1/ρ} − σ̃_max^{1/ρ}))^ρ, t_i = λ⁻¹(−log σ̃_i) |
/// | `UniformLogSnr { sampling_eps }` | λ uniform between λ(T) and λ(ε), t_i = λ⁻¹(λ_i) |
/// | `UniformTime { sampling_eps }` | t uniform: t_i = T + i/n (ε − T) |
/// | `Times(v)` | the given times, used as they are (strictly decreasing, in (0, T], ≥ 2 values; then n = len − 1) |
///
/// On the reference grid the last step integrates down to t = 0, as the reference's last step
/// does (SMLD's σ_{−1} = 0, DDPM's x_0); every other schedule stops at its last time > 0, and
/// the driver's final denoising step (if on) goes the rest of the way.
/// For VE, σ̃ is σ(t), so `Karras` is EDM's schedule exactly; for VP and sub-VP it is EDM's
/// σ of the scaled variable x/α (EDM §C.2). λ⁻¹ is [`Sde::t_of_log_snr`].
/// ```
/// use candle_core::DType;
/// use sde_solvers::schedule::Schedule;
/// let sde = sde_core::VeSde::new(0.01, 50.0, 1000)?;
/// let t = Schedule::Karras { sigma_min: 0.02, sigma_max: 50.0, rho: 7.0 }.times(&sde, 10, DType::F64)?;
/// assert_eq!(t.len(), 11);
/// // σ(t_i) follows the ρ-schedule: σ(t_10) = σ_min
/// assert!((t[0] - 1.0).abs() < 1e-12 && (sde.sigma(t[10]) - 0.02).abs() < 1e-12);
/// // times outside (0, T] are refused
/// assert!(Schedule::Times(vec![1.0, 0.5, 0.0]).times(&sde, 2, DType::F64).is_err());
/// # Ok::<(), sde_solvers::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// The reference grid `linspace(T, sampling_eps, n)` (then 0); with n = [`Sde::n`] the PC
    /// sampler reproduces the reference bit for bit.
    Reference {
        /// Last grid time ε (`eps`), 0 < ε < T.
        #[doc(alias = "eps")]
        sampling_eps: f64,
    },
    /// EDM's ρ-schedule (Karras et al. 2022, eq. 5) in σ̃ = σ/α; EDM uses ρ = 7.
    Karras {
        /// Smallest σ̃ (the last time), > 0.
        sigma_min: f64,
        /// Largest σ̃ (the first time), ≤ σ̃(T).
        sigma_max: f64,
        /// ρ > 0.
        rho: f64,
    },
    /// Uniform in λ = log(α/σ) between T and ε (DPM-Solver's `logSNR` skip type).
    #[doc(alias = "logSNR")]
    UniformLogSnr {
        /// Last time ε, 0 < ε < T.
        sampling_eps: f64,
    },
    /// Uniform in t between T and ε (DPM-Solver's `time_uniform`).
    #[doc(alias = "time_uniform")]
    UniformTime {
        /// Last time ε, 0 < ε < T.
        sampling_eps: f64,
    },
    /// User-given times t_0 > … > t_n in (0, T]; the step count is `len − 1`.
    Times(Vec<f64>),
}

impl Default for Schedule {
    /// `Reference { sampling_eps: 1e-3 }`, the reference's default grid.
    fn default() -> Self {
        Schedule::Reference { sampling_eps: 1e-3 }
    }
}

impl Schedule {
    /// Short name for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Schedule::Reference { .. } => "Reference",
            Schedule::Karras { .. } => "Karras",
            Schedule::UniformLogSnr { .. } => "UniformLogSnr",
            Schedule::UniformTime { .. } => "UniformTime",
            Schedule::Times(_) => "Times",
        }
    }

    /// EDM's ρ-schedule spanning `sde` from T down to `sampling_eps`: σ̃_max = σ̃(T) and
    /// σ̃_min = σ̃(ε), with σ̃ = σ/α = e^{−λ} ([`Sde::log_snr`]).
    /// ```
    /// use sde_solvers::schedule::Schedule;
    /// let sde = sde_core::VeSde::new(0.01, 50.0, 1000)?;
    /// let s = Schedule::karras(&sde, 1e-5, 7.0)?;
    /// assert!(matches!(s, Schedule::Karras { sigma_max, .. } if (sigma_max - 50.0).abs() < 1e-9));
    /// # Ok::<(), sde_solvers::Error>(())
    /// ```
    pub fn karras<S: Sde + ?Sized>(sde: &S, sampling_eps: f64, rho: f64) -> Result<Self> {
        check_eps(sampling_eps, sde.t_end())?;
        Ok(Schedule::Karras {
            sigma_min: (-sde.log_snr(sampling_eps)?).exp(),
            sigma_max: (-sde.log_snr(sde.t_end())?).exp(),
            rho,
        })
    }

    /// The step count this schedule implies by itself: `len − 1` for [`Schedule::Times`], else
    /// `None` (the sampler's count is used).
    pub fn fixed_steps(&self) -> Option<usize> {
        match self {
            Schedule::Times(v) => Some(v.len().saturating_sub(1)),
            _ => None,
        }
    }

    /// The n + 1 boundary times t_0 = T > … > t_n for `n` steps on `sde` (see the type's doc).
    /// `dtype` is the data's: the reference grid is computed as torch computes it in that dtype.
    ///
    /// Errors ([`Error::InvalidSchedule`], [`Error::InvalidParameter`]): n = 0; ε outside (0, T);
    /// σ̃ bounds outside the SDE's range or ρ ≤ 0; user times not finite, outside (0, T], not
    /// strictly decreasing, fewer than 2, or n ≠ len − 1.
    pub fn times<S: Sde + ?Sized>(&self, sde: &S, n: usize, dtype: DType) -> Result<Vec<f64>> {
        let t_end = sde.t_end();
        if n == 0 {
            return Err(self.invalid("the sampler needs at least one step", 0, 0.0));
        }
        let v = match self {
            Schedule::Reference { sampling_eps } => {
                let mut v = time_grid(t_end, *sampling_eps, n, dtype)?;
                v.push(0.0);
                return Ok(v);
            }
            Schedule::UniformTime { sampling_eps } => {
                check_eps(*sampling_eps, t_end)?;
                (0..=n)
                    .map(|i| t_end + (sampling_eps - t_end) * i as f64 / n as f64)
                    .collect::<Vec<_>>()
            }
            Schedule::UniformLogSnr { sampling_eps } => {
                check_eps(*sampling_eps, t_end)?;
                let (l0, l1) = (sde.log_snr(t_end)?, sde.log_snr(*sampling_eps)?);
                let mut v = Vec::with_capacity(n + 1);
                for i in 0..=n {
                    v.push(match i {
                        0 => t_end,
                        i if i == n => *sampling_eps,
                        _ => sde.t_of_log_snr(l0 + (l1 - l0) * i as f64 / n as f64)?,
                    });
                }
                v
            }
            Schedule::Karras {
                sigma_min,
                sigma_max,
                rho,
            } => {
                let (smin, smax, rho) = (*sigma_min, *sigma_max, *rho);
                if !(rho.is_finite() && rho > 0.0) {
                    return Err(self.invalid("rho must be finite and > 0", 0, rho));
                }
                if !(smin.is_finite() && smin > 0.0 && smax.is_finite() && smax > smin) {
                    return Err(self.invalid("need 0 < sigma_min < sigma_max, finite", 0, smin));
                }
                let top = (-sde.log_snr(t_end)?).exp();
                if smax > top * (1.0 + 1e-12) {
                    return Err(self.invalid(
                        "sigma_max exceeds the SDE's sigma(T)/alpha(T)",
                        0,
                        smax,
                    ));
                }
                let (a, b) = (smax.powf(1.0 / rho), smin.powf(1.0 / rho));
                let mut v = Vec::with_capacity(n + 1);
                for i in 0..=n {
                    let s = (a + (b - a) * i as f64 / n as f64).powf(rho);
                    v.push(if i == 0 && smax >= top {
                        t_end
                    } else {
                        sde.t_of_log_snr(-s.ln())?
                    });
                }
                v
            }
            Schedule::Times(v) => {
                if v.len() != n + 1 {
                    return Err(self.invalid(
                        "the step count must be len - 1 of the given times",
                        0,
                        n as f64,
                    ));
                }
                v.clone()
            }
        };
        self.validate(&v, t_end)?;
        Ok(v)
    }

    /// Checks finite, inside (0, T], strictly decreasing, ≥ 2 values.
    fn validate(&self, v: &[f64], t_end: f64) -> Result<()> {
        if v.len() < 2 {
            return Err(self.invalid("needs at least 2 times (1 step)", 0, v.len() as f64));
        }
        for (i, &t) in v.iter().enumerate() {
            if !t.is_finite() {
                return Err(self.invalid("times must be finite", i, t));
            }
            if !(t > 0.0 && t <= t_end) {
                return Err(self.invalid("times must lie in (0, T]", i, t));
            }
            if i > 0 && t >= v[i - 1] {
                return Err(self.invalid("times must be strictly decreasing", i, t));
            }
        }
        Ok(())
    }

    fn invalid(&self, reason: &'static str, index: usize, value: f64) -> Error {
        Error::InvalidSchedule {
            schedule: self.name(),
            reason,
            index,
            value,
        }
    }
}

fn check_eps(sampling_eps: f64, t_end: f64) -> Result<()> {
    if sampling_eps.is_finite() && sampling_eps > 0.0 && sampling_eps < t_end {
        Ok(())
    } else {
        Err(Error::InvalidParameter {
            name: "sampling_eps",
            value: sampling_eps,
            reason: "must satisfy 0 < sampling_eps < T",
        })
    }
}
