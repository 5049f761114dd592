//! [`GaussianScore`]: the exact score and log density of Gaussian data under an SDE.

use candle_core::{DType, Device, Shape, Tensor};

use crate::error::{Error, Result};
use crate::noise::NoiseSource;
use crate::score::ScoreFn;
use crate::sde::Sde;
use crate::tensor::{expand_batch, to_host_f64};

use super::compute_device;

/// Gaussian data p_0 = N(μ, diag(s²)) under an SDE: the exact score
/// $\nabla_x \log p_t(x) = -(x - a(t)\mu) / (a(t)^2 s^2 + \sigma(t)^2)$, with $(a, \sigma)$ from
/// [`Sde::marginal_coeffs`].
///
/// The ground truth: every quantity is computed from this closed form in **f64**, whatever the
/// dtype of `x` (the coefficients too, from `t` widened to f64), with tensor ops on `x`'s
/// device (on the CPU for Metal, which has no f64), and returned in `x`'s dtype. The ops are
/// differentiable by autograd.
///
/// `mean` and `std` broadcast against one sample (e.g. a scalar, or the sample shape `[C, H, W]`).
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use sde_core::{analytic::GaussianScore, ScoreFn, VpSde};
/// let sde = VpSde::default();
/// let oracle = GaussianScore::isotropic(&sde, 0.3, 0.6)?;
/// let x = Tensor::zeros((4, 3, 8, 8), DType::F32, &Device::Cpu)?;
/// let t = sde_core::time_tensor(0.5, 4, &Device::Cpu, DType::F32)?;
/// let s = oracle.score(&x, &t)?;
/// assert_eq!(s.dims(), x.dims());
/// # Ok::<(), sde_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct GaussianScore<S> {
    sde: S,
    mean: Tensor,
    std: Tensor,
}

impl<S: Sde> GaussianScore<S> {
    /// Data N(`mean`, diag(`std`²)); `std` must be positive, both finite and non-empty.
    pub fn new(sde: S, mean: Tensor, std: Tensor) -> Result<Self> {
        for (arg, p) in [("mean", &mean), ("std", &std)] {
            if p.elem_count() == 0 {
                return Err(Error::ShapeMismatch {
                    what: if arg == "mean" {
                        "GaussianScore::new mean"
                    } else {
                        "GaussianScore::new std"
                    },
                    expected: "a non-empty tensor broadcasting against one sample".into(),
                    got: format!("{:?}", p.dims()),
                });
            }
        }
        let s = to_host_f64(&std)?;
        let m = to_host_f64(&mean)?;
        if m.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                what: "GaussianScore mean".into(),
            });
        }
        if let Some(&bad) = s.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
            return Err(Error::InvalidParameter {
                name: "std",
                value: bad,
                reason: "must be finite and > 0",
            });
        }
        Ok(Self { sde, mean, std })
    }

    /// Data N(`mean` · 1, `std`² I) with scalar mean and std (f32 tensors on the CPU;
    /// they follow `x` to its device and dtype).
    pub fn isotropic(sde: S, mean: f64, std: f64) -> Result<Self> {
        let dev = Device::Cpu;
        Self::new(
            sde,
            Tensor::new(mean as f32, &dev)?,
            Tensor::new(std as f32, &dev)?,
        )
    }

    /// μ and s on `device` in `dtype`.
    fn params_on(&self, device: &Device, dtype: DType) -> Result<(Tensor, Tensor)> {
        Ok((
            self.mean.to_device(device)?.to_dtype(dtype)?,
            self.std.to_device(device)?.to_dtype(dtype)?,
        ))
    }

    /// `x` in f64 on the compute device, with the mean a μ and variance a² s² + σ² of p_t
    /// broadcast to its shape, all f64.
    fn moments(
        &self,
        func: &'static str,
        x: &Tensor,
        t: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        crate::tensor::check_time_in(func, x, t, self.sde.t_end())?;
        let dev = compute_device(x);
        let x64 = x.to_device(&dev)?.to_dtype(DType::F64)?;
        let t64 = t.to_device(&dev)?.to_dtype(DType::F64)?;
        let (a, sigma) = self.sde.marginal_coeffs(&t64)?;
        let (mu, s) = self.params_on(&dev, DType::F64)?;
        let a = expand_batch(&a, &x64)?;
        let sigma = expand_batch(&sigma, &x64)?;
        let mean = a.broadcast_mul(&mu)?.broadcast_as(x64.shape())?;
        let var = a
            .sqr()?
            .broadcast_mul(&s.sqr()?)?
            .broadcast_add(&sigma.sqr()?)?
            .broadcast_as(x64.shape())?;
        Ok((x64, mean, var))
    }

    /// log p_t(x) per sample, `[B]` in `x`'s dtype (computed in f64):
    /// $-\tfrac12 \sum_j \big[(x_j - a\mu_j)^2 / v_j + \log(2\pi v_j)\big]$, $v = a^2 s^2 + \sigma^2$.
    pub fn log_prob(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        let (x64, mean, var) = self.moments("GaussianScore::log_prob", x, t)?;
        back(gaussian_logp(&x64, &mean, &var)?, x)
    }

    /// log p_0(x) of the data distribution itself, `[B]` in `x`'s dtype (computed in f64).
    pub fn log_prob_data(&self, x: &Tensor) -> Result<Tensor> {
        crate::tensor::batch_size("GaussianScore::log_prob_data", "x", x)?;
        crate::tensor::check_float("GaussianScore::log_prob_data", "x", x)?;
        let dev = compute_device(x);
        let x64 = x.to_device(&dev)?.to_dtype(DType::F64)?;
        let (mu, s) = self.params_on(&dev, DType::F64)?;
        let mean = mu.broadcast_as(x.shape())?.contiguous()?;
        let var = s.sqr()?.broadcast_as(x.shape())?.contiguous()?;
        back(gaussian_logp(&x64, &mean, &var)?, x)
    }

    /// Draws from the data distribution p_0, of shape `shape` (`[B, ...]`).
    pub fn sample<N: NoiseSource + ?Sized>(
        &self,
        shape: &Shape,
        device: &Device,
        dtype: DType,
        noise: &mut N,
    ) -> Result<Tensor> {
        let z = noise.randn(shape, device, dtype)?;
        let (mu, s) = self.params_on(z.device(), z.dtype())?;
        Ok(z.broadcast_mul(&s)?.broadcast_add(&mu)?)
    }
}

impl<S: Sde> ScoreFn for GaussianScore<S> {
    /// −(x − a μ) / (a² s² + σ²), computed in f64, returned in `x`'s dtype.
    fn score(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        let (x64, mean, var) = self.moments("GaussianScore::score", x, t)?;
        back((x64 - mean)?.neg()?.div(&var)?, x)
    }

    /// The Jacobian is −diag(1/(a² s² + σ²)), so vᵀJ = −v / var (f64, returned in `x`'s dtype).
    fn score_with_vjp(&self, x: &Tensor, t: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (x64, mean, var) = self.moments("GaussianScore::score_with_vjp", x, t)?;
        if v.shape() != x.shape() {
            return Err(Error::ShapeMismatch {
                what: "GaussianScore::score_with_vjp probe v",
                expected: format!("{:?} (the shape of x)", x.dims()),
                got: format!("{:?}", v.dims()),
            });
        }
        let score = (x64 - mean)?.neg()?.div(&var)?;
        let vjp = v
            .to_device(var.device())?
            .to_dtype(DType::F64)?
            .neg()?
            .div(&var)?;
        Ok((back(score, x)?, back(vjp, x)?))
    }
}

/// `y` (computed in f64) in the dtype and on the device of the input `x`.
fn back(y: Tensor, x: &Tensor) -> Result<Tensor> {
    Ok(y.to_dtype(x.dtype())?.to_device(x.device())?)
}

/// Per-sample log N(x; mean, diag(var)) summed over non-batch dims.
fn gaussian_logp(x: &Tensor, mean: &Tensor, var: &Tensor) -> Result<Tensor> {
    let two_pi = 2.0 * std::f64::consts::PI;
    let quad = ((x - mean)?.sqr()? / var)?;
    let logdet = var.affine(two_pi, 0.0)?.log()?;
    crate::tensor::sum_non_batch(&(quad + logdet)?.affine(-0.5, 0.0)?)
}
