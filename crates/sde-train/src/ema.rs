//! Exponential moving average of the weights (`models/ema.ExponentialMovingAverage`).

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;

use crate::error::{check_param, Error, Result};
use crate::optim::named_vars;

/// EMA of the parameters with the reference's warm-up of the decay:
///
/// n ← n + 1,  d = min(decay, (1 + n)/(10 + n)),  θ̄ ← θ̄ − (1 − d)(θ̄ − θ).
///
/// The paper uses `decay = 0.999` (VP / sub-VP) or `0.9999` (VE). Shadow weights are kept in
/// [`named_vars`] order; [`swap`](Ema::swap) puts them into the model (for evaluation,
/// sampling or export) and back.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{Init, VarMap};
/// let vm = VarMap::new();
/// let w = vm.get(2, "w", Init::Const(0.0), DType::F32, &Device::Cpu)?;
/// let mut ema = sde_train::Ema::new(&vm, 0.999)?;
/// sde_train::named_vars(&vm)[0].1.set(&Tensor::ones(2, DType::F32, &Device::Cpu)?)?;
/// ema.update()?; // n = 1: d = min(0.999, 2/11), θ̄ = 0 − (1 − 2/11)(0 − 1) = 9/11
/// let s = ema.shadow()[0].1.to_vec1::<f32>()?;
/// assert!((s[0] - 9.0 / 11.0).abs() < 1e-6);
/// # Ok::<(), sde_train::Error>(())
/// ```
#[doc(alias = "ExponentialMovingAverage")]
#[derive(Debug)]
pub struct Ema {
    decay: f64,
    num_updates: Option<u64>,
    vars: Vec<(String, Var)>,
    shadow: Vec<(String, Tensor)>,
}

impl Ema {
    /// Shadow copies of every variable of `varmap`, with the `num_updates` warm-up.
    pub fn new(varmap: &VarMap, decay: f64) -> Result<Self> {
        Self::with_warmup(varmap, decay, true)
    }

    /// As [`new`](Self::new); `use_num_updates = false` uses the constant decay.
    pub fn with_warmup(varmap: &VarMap, decay: f64, use_num_updates: bool) -> Result<Self> {
        check_param(
            "decay",
            decay,
            (0.0..=1.0).contains(&decay),
            "must lie in [0, 1]",
        )?;
        let vars = named_vars(varmap);
        let shadow = vars
            .iter()
            .map(|(n, v)| Ok((n.clone(), v.as_tensor().detach().copy()?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            decay,
            num_updates: use_num_updates.then_some(0),
            vars,
            shadow,
        })
    }

    /// The target decay.
    pub fn decay(&self) -> f64 {
        self.decay
    }

    /// Updates so far (`num_updates`), `None` without warm-up.
    pub fn num_updates(&self) -> Option<u64> {
        self.num_updates
    }

    /// The shadow weights `(name, θ̄)`.
    pub fn shadow(&self) -> &[(String, Tensor)] {
        &self.shadow
    }

    /// The decay the next update will use.
    pub fn next_decay(&self) -> f64 {
        match self.num_updates {
            Some(n) => {
                let n = (n + 1) as f64;
                self.decay.min((1.0 + n) / (10.0 + n))
            }
            None => self.decay,
        }
    }

    /// θ̄ ← θ̄ − (1 − d)(θ̄ − θ) with the current weights θ (`ema.update(model.parameters())`).
    pub fn update(&mut self) -> Result<()> {
        let d = self.next_decay();
        if let Some(n) = self.num_updates.as_mut() {
            *n += 1;
        }
        for ((_, var), (_, s)) in self.vars.iter().zip(self.shadow.iter_mut()) {
            let theta = var.as_tensor().detach();
            if theta.device().is_cpu() && theta.dtype() == DType::F32 && s.dtype() == DType::F32 {
                // One fused host loop (CPU f32): θ̄ ← θ̄ − (1 − d)(θ̄ − θ).
                let th = theta.flatten_all()?.to_vec1::<f32>()?;
                let mut sh = s.flatten_all()?.to_vec1::<f32>()?;
                sde_kernels::simd::ema_update(&mut sh, &th, (1.0 - d) as f32);
                *s = Tensor::from_vec(sh, theta.shape(), &Device::Cpu)?;
            } else {
                *s = (&*s - ((&*s - theta)? * (1.0 - d))?)?;
            }
        }
        Ok(())
    }

    /// Exchanges the model weights and the shadow weights (call twice to undo): the
    /// reference's `store` + `copy_to`, then `restore`.
    pub fn swap(&mut self) -> Result<()> {
        for ((_, var), (_, s)) in self.vars.iter().zip(self.shadow.iter_mut()) {
            let current = var.as_tensor().detach().copy()?;
            var.set(s)?;
            *s = current;
        }
        Ok(())
    }

    /// Runs `f` with the EMA weights in the model, then puts the training weights back (also
    /// when `f` fails).
    pub fn with_ema_weights<T>(&mut self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.swap()?;
        let out = f();
        self.swap()?;
        out
    }

    /// Restores `num_updates` and the shadow weights (from a checkpoint); shapes must match.
    pub fn set_state(&mut self, num_updates: Option<u64>, shadow: Vec<Tensor>) -> Result<()> {
        if shadow.len() != self.shadow.len() {
            return Err(Error::ShapeMismatch {
                what: "EMA shadow weights",
                expected: format!("{} tensors", self.shadow.len()),
                got: format!("{}", shadow.len()),
            });
        }
        for ((name, old), new) in self.shadow.iter().zip(&shadow) {
            if old.shape() != new.shape() {
                return Err(Error::ShapeMismatch {
                    what: "EMA shadow weight",
                    expected: format!("{name}: {:?}", old.dims()),
                    got: format!("{:?}", new.dims()),
                });
            }
        }
        for ((_, old), new) in self.shadow.iter_mut().zip(shadow) {
            *old = new;
        }
        self.num_updates = num_updates;
        Ok(())
    }
}
