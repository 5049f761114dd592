//! Score functions, the network-side model trait, and the adapter between them
//! (the reference's `get_score_fn`).

use std::cell::RefCell;

use candle_core::{DType, Tensor, Var};

use crate::error::{Error, Result};
use crate::noise::NoiseSource;
use crate::sde::{LabelConvention, Sde};
use crate::tensor::{from_host_f64, mul_batch, to_host_f64};

/// A time-dependent score s(x, t) ≈ ∇ₓ log p_t(x): `x: [B, ...]`, `t: [B]` → `[B, ...]`.
///
/// Implemented for closures `Fn(&Tensor, &Tensor) -> sde_core::Result<Tensor>`, for
/// [`ScoreModelFn`] (a network through its label convention) and for the analytic oracles.
pub trait ScoreFn {
    /// ∇ₓ log p_t(x).
    fn score(&self, x: &Tensor, t: &Tensor) -> Result<Tensor>;

    /// The score and the vector–Jacobian product vᵀ ∂s/∂x at `(x, t)`, as the likelihood's
    /// divergence estimators need. Default: candle autograd through [`score`](Self::score);
    /// the analytic oracles override it with closed forms.
    fn score_with_vjp(&self, x: &Tensor, t: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        autograd_vjp(|x| self.score(x, t), x, v)
    }
}

/// `(f(x), vᵀ ∂f/∂x)` by candle's reverse-mode autograd: one forward and one backward pass.
///
/// `f(x)` must have the shape of the probe `v` (the data's shape when `f` is a score or a
/// drift); otherwise [`Error::ShapeMismatch`] with the probe's shape as expected and the
/// output's as got.
pub fn autograd_vjp(
    f: impl FnOnce(&Tensor) -> Result<Tensor>,
    x: &Tensor,
    v: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let xv = Var::from_tensor(&x.detach())?;
    let y = f(xv.as_tensor())?;
    if y.shape() != v.shape() {
        return Err(Error::ShapeMismatch {
            what: "autograd_vjp: output of the differentiated function (score or drift) vs the probe v",
            expected: format!("{:?} (the probe's shape)", v.dims()),
            got: format!("{:?}", y.dims()),
        });
    }
    let obj = (&y * v.to_dtype(y.dtype())?)?.sum_all()?;
    let grads = obj.backward()?;
    let g = match grads.get(xv.as_tensor()) {
        Some(g) => g.clone(),
        None => x.zeros_like()?,
    };
    Ok((y.detach(), g))
}

impl<F: Fn(&Tensor, &Tensor) -> Result<Tensor>> ScoreFn for F {
    fn score(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        self(x, t)
    }
}

/// How a network runs: evaluation, or training with dropout drawn from the caller's source.
///
/// The reference switches with `model.train()` / `model.eval()` and draws dropout masks from
/// torch's global generator; here the generator is an argument, so a training step is a pure
/// function of the weights, the batch and the caller's (checkpointed) [`NoiseSource`]: a run
/// resumed from a checkpoint draws the same masks as an uninterrupted one.
///
/// Pass a source by reborrowing it: `Mode::Train(&mut rng)`; pass one `Mode` to several calls
/// with [`Mode::reborrow`].
#[doc(alias = "train")]
#[doc(alias = "eval")]
pub enum Mode<'a> {
    /// `model.eval()`: deterministic, dropout off.
    Eval,
    /// `model.train()`: dropout on, every mask drawn from this source, in call order.
    Train(&'a mut dyn NoiseSource),
}

impl Mode<'_> {
    /// The same mode for one more call, borrowing the source for that call only.
    pub fn reborrow(&mut self) -> Mode<'_> {
        match self {
            Mode::Eval => Mode::Eval,
            Mode::Train(n) => Mode::Train(&mut **n),
        }
    }

    /// `true` for [`Mode::Train`].
    pub fn is_train(&self) -> bool {
        matches!(self, Mode::Train(_))
    }

    /// The noise source in training mode, `None` in evaluation.
    pub fn noise(&mut self) -> Option<&mut dyn NoiseSource> {
        match self {
            Mode::Eval => None,
            Mode::Train(n) => Some(&mut **n),
        }
    }
}

impl std::fmt::Debug for Mode<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Eval => "Mode::Eval",
            Mode::Train(_) => "Mode::Train(..)",
        })
    }
}

/// A network that takes `(x, labels)`: candle's `ModuleT` with a time-label input.
///
/// `score-nets` implements it for NCSN++, DDPM++, DDPM and the MLP; [`ScoreModelFn`] turns it
/// into a [`ScoreFn`] with the label convention of an SDE.
pub trait ScoreModel {
    /// Network output for inputs `x: [B, ...]` and time labels `labels: [B]`
    /// (float, or `i64` for discrete SMLD indices). [`Mode::Train`] enables dropout, drawing
    /// every mask from its source; a network without dropout ignores the mode.
    fn forward_t(&self, x: &Tensor, labels: &Tensor, mode: Mode<'_>) -> Result<Tensor>;
}

impl<M: ScoreModel + ?Sized> ScoreModel for &M {
    fn forward_t(&self, x: &Tensor, labels: &Tensor, mode: Mode<'_>) -> Result<Tensor> {
        (**self).forward_t(x, labels, mode)
    }
}

impl<M: ScoreModel + ?Sized> ScoreModel for Box<M> {
    fn forward_t(&self, x: &Tensor, labels: &Tensor, mode: Mode<'_>) -> Result<Tensor> {
        (**self).forward_t(x, labels, mode)
    }
}

/// A network seen as a score function through its SDE's [`LabelConvention`]
/// (`models/utils.get_score_fn(sde, model, train, continuous)`).
///
/// | SDE | continuous | label | score |
/// |---|---|---|---|
/// | VE | yes | σ(t) | output |
/// | VE | no | round((T − t)(N − 1)) (`i64`) | output |
/// | VP, sub-VP | yes (sub-VP: always) | 999 t | −output / std(t) |
/// | VP | no | (N − 1) t | −output / √(1 − ᾱ_⌊label⌋) |
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use sde_core::{Mode, ScoreFn, ScoreModel, ScoreModelFn, VpSde};
/// struct Zero;
/// impl ScoreModel for Zero {
///     fn forward_t(&self, x: &Tensor, _labels: &Tensor, _mode: Mode<'_>) -> sde_core::Result<Tensor> {
///         Ok(x.zeros_like()?)
///     }
/// }
/// let sde = VpSde::default();
/// let score_fn = ScoreModelFn::new(&sde, &Zero, true);
/// let t = sde_core::time_tensor(0.5, 2, &Device::Cpu, DType::F32)?;
/// assert_eq!(score_fn.labels(&t)?.to_vec1::<f32>()?, vec![499.5, 499.5]);
/// let s = score_fn.score(&Tensor::ones((2, 2), DType::F32, &Device::Cpu)?, &t)?;
/// # Ok::<(), sde_core::Error>(())
/// ```
///
/// **Training mode.** [`ScoreFn::score`] takes `&self`, so the training source sits in a
/// `RefCell` ([`ScoreModelFn::train`]): each `score` call borrows it for that call only and
/// the network draws its dropout masks from it in call order. The adapter is therefore not
/// `Sync` in training mode (it never is shared across threads by the losses); a re-entrant
/// `score` call from inside the model is an error, not a panic.
pub struct ScoreModelFn<'a, S: ?Sized, M: ?Sized> {
    sde: &'a S,
    model: &'a M,
    convention: LabelConvention,
    noise: Option<RefCell<&'a mut dyn NoiseSource>>,
}

impl<S: ?Sized, M: ?Sized> std::fmt::Debug for ScoreModelFn<'_, S, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScoreModelFn")
            .field("convention", &self.convention)
            .field("train", &self.noise.is_some())
            .finish_non_exhaustive()
    }
}

impl<'a, S: Sde + ?Sized, M: ScoreModel + ?Sized> ScoreModelFn<'a, S, M> {
    /// The score of `model` under `sde`'s convention for continuous- or discrete-time training,
    /// in evaluation mode ([`Mode::Eval`]).
    pub fn new(sde: &'a S, model: &'a M, continuous: bool) -> Self {
        Self {
            sde,
            model,
            convention: sde.label_convention(continuous),
            noise: None,
        }
    }

    /// Runs the model in `mode`, as the training losses do: [`Mode::Train`] keeps the source
    /// and every later [`score`](ScoreFn::score) call runs the model in training mode with it
    /// (`get_score_fn(.., train=True)`); [`Mode::Eval`] switches back to evaluation.
    ///
    /// The adapter then lives as long as the source's borrow (`'n`), no longer.
    pub fn train<'n>(self, mode: Mode<'n>) -> ScoreModelFn<'n, S, M>
    where
        'a: 'n,
    {
        ScoreModelFn {
            sde: self.sde,
            model: self.model,
            convention: self.convention,
            noise: match mode {
                Mode::Eval => None,
                Mode::Train(n) => Some(RefCell::new(n)),
            },
        }
    }

    /// Whether the model runs in training mode.
    pub fn is_train(&self) -> bool {
        self.noise.is_some()
    }

    /// The label convention in use.
    pub fn convention(&self) -> &LabelConvention {
        &self.convention
    }

    /// The time labels the network receives for times `t: [B]`.
    /// `t` must be a float `[B]` tensor ([`Error::DType`] / [`Error::Rank`] otherwise).
    pub fn labels(&self, t: &Tensor) -> Result<Tensor> {
        crate::tensor::batch_size("ScoreModelFn::labels", "t", t)?;
        crate::tensor::check_float("ScoreModelFn::labels", "t", t)?;
        match &self.convention {
            LabelConvention::Sigma => Ok(self.sde.marginal_coeffs(t)?.1),
            LabelConvention::SigmaIndex { n, t_end } => {
                let host = to_host_f64(t)?;
                crate::tensor::check_time_values(&host, *t_end)?;
                let k = n.saturating_sub(1) as f64;
                let labels: Vec<i64> = host
                    .iter()
                    .map(|&ti| {
                        if t.dtype() == DType::F32 {
                            // torch: labels = T - t; labels *= N - 1; round (half to even)
                            (((*t_end as f32) - ti as f32) * k as f32).round_ties_even() as i64
                        } else {
                            ((t_end - ti) * k).round_ties_even() as i64
                        }
                    })
                    .collect();
                let b = labels.len();
                Ok(Tensor::from_vec(labels, b, t.device())?)
            }
            LabelConvention::ScaledTime { scale } => Ok(t.affine(*scale, 0.0)?),
            LabelConvention::DdpmTimestep {
                sqrt_1m_alphas_cumprod,
                ..
            } => {
                let k = sqrt_1m_alphas_cumprod.len().saturating_sub(1) as f64;
                Ok(t.affine(k, 0.0)?)
            }
        }
    }
}

impl<S: Sde + ?Sized, M: ScoreModel + ?Sized> ScoreFn for ScoreModelFn<'_, S, M> {
    fn score(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        crate::tensor::check_time_in("ScoreModelFn::score", x, t, self.sde.t_end())?;
        let labels = self.labels(t)?;
        let out = match &self.noise {
            None => self.model.forward_t(x, &labels, Mode::Eval)?,
            Some(cell) => {
                let mut noise = cell.try_borrow_mut().map_err(|_| {
                    Error::Unsupported(
                        "ScoreModelFn::score called re-entrantly in training mode (the model \
                         called its own score function)"
                            .into(),
                    )
                })?;
                self.model
                    .forward_t(x, &labels, Mode::Train(&mut **noise))?
            }
        };
        if out.shape() != x.shape() {
            return Err(Error::ShapeMismatch {
                what: "model output",
                expected: format!("{:?}", x.dims()),
                got: format!("{:?}", out.dims()),
            });
        }
        match &self.convention {
            LabelConvention::Sigma | LabelConvention::SigmaIndex { .. } => Ok(out),
            LabelConvention::ScaledTime { .. } => {
                let std = self.sde.marginal_coeffs(t)?.1;
                Ok(mul_batch(&std.recip()?.neg()?, &out)?)
            }
            LabelConvention::DdpmTimestep {
                sqrt_1m_alphas_cumprod,
                ..
            } => {
                let lab = to_host_f64(&labels)?;
                let Some(last) = sqrt_1m_alphas_cumprod.len().checked_sub(1) else {
                    return Err(Error::ShapeMismatch {
                        what: "LabelConvention::DdpmTimestep sqrt_1m_alphas_cumprod",
                        expected: "N ≥ 1 entries".into(),
                        got: "0".into(),
                    });
                };
                let inv: Vec<f64> = lab
                    .iter()
                    .map(|&l| -1.0 / sqrt_1m_alphas_cumprod[(l.max(0.0) as usize).min(last)])
                    .collect();
                let inv = from_host_f64(inv, t.device(), out.dtype())?;
                mul_batch(&inv, &out)
            }
        }
    }
}
