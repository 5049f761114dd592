//! Probability-flow ODE sampler (`sampling.get_ode_sampler`): prior → data, with the latent
//! encoding `encode(x) -> z` and decoding `decode(z) -> x` of the paper.

use candle_core::{DType, Device, Shape, Tensor};
use sde_core::noise::NoiseSource;
use sde_core::{ReverseSde, ScoreFn, Sde};

use crate::error::{Error, Result};
use crate::ode::{OdeMethod, OdeSolution, Rowwise};

/// Options of [`OdeSampler`], mirroring `get_ode_sampler(sde, shape, inverse_scaler, denoise,
/// rtol, atol, method, eps)`. Defaults: RK45 with `rtol = atol = 1e-5` and
/// [`ErrorNorm::Batch`](crate::ode::ErrorNorm::Batch) (the reference's scipy call),
/// `sampling_eps = 1e-3`, `denoise = true`, `solver_dtype = F64` (scipy integrates in float64;
/// the score is evaluated in the data's dtype).
///
/// `denoise` defaults to `true`, as in [`PcSampler`](crate::pc::PcSampler) and the driver
/// ([`Sampler`](crate::driver::Sampler)): `get_ode_sampler`'s own default is `False`, but the
/// reference samples through `get_sampling_fn`, which passes its configs'
/// `noise_removal = True` to both samplers; without it samples keep noise of std σ(ε).
#[derive(Debug, Clone, PartialEq)]
pub struct OdeSamplerOptions {
    /// The integrator (`method`, `rtol`, `atol`).
    pub method: OdeMethod,
    /// The ODE is integrated between T and `sampling_eps` > 0 (`eps`), avoiding t = 0.
    #[doc(alias = "eps")]
    pub sampling_eps: f64,
    /// One reverse-diffusion predictor step at t = ε after the ODE, returning its mean
    /// (`denoise`, the paper's noise removal).
    #[doc(alias = "noise_removal")]
    pub denoise: bool,
    /// dtype of the solver's state (F64 as scipy; F32 halves memory on accelerators, and Metal
    /// has no F64). The drift is always evaluated in the dtype of the data passed in.
    pub solver_dtype: DType,
}

impl Default for OdeSamplerOptions {
    fn default() -> Self {
        Self {
            method: OdeMethod::default(),
            sampling_eps: 1e-3,
            denoise: true,
            solver_dtype: DType::F64,
        }
    }
}

/// Samples by integrating the probability-flow ODE of any [`Sde`] with a score s ≈ ∇ₓ log p_t,
///
/// dx/dt = f̃(x, t) = f(x, t) − ½ g(t)² s(x, t),
///
/// from x(T) = z ~ p_T back to x(ε) (`get_ode_sampler`), optionally followed by one
/// reverse-diffusion step without noise at t = ε: with (f_ε, G_ε) the forward discretisation,
/// x ← x − f_ε(x) + G_ε² s(x, ε) (`denoise`). The same flow maps data to latents
/// ([`encode`](Self::encode), ε → T) and back ([`decode`](Self::decode), T → ε): the latent
/// space the paper interpolates in. `nfe` counts the score evaluations made: the ODE's drift
/// evaluations (scipy's `nfev`, what the reference reports) plus one for the denoising step.
///
/// ```
/// use candle_core::{DType, Device, Shape};
/// use rand::SeedableRng;
/// use sde_core::{analytic::GaussianScore, VpSde};
/// use sde_solvers::ode_sampler::{OdeSampler, OdeSamplerOptions};
///
/// let sde = VpSde::default();
/// let score = GaussianScore::isotropic(&sde, 0.3, 0.6)?; // data N(0.3, 0.6²)
/// let sampler = OdeSampler::new(&sde, &score, OdeSamplerOptions { denoise: true, ..Default::default() })?;
/// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
/// let out = sampler.sample(&Shape::from((256, 2)), &Device::Cpu, DType::F32, &mut rng)?;
/// let mean = out.x.mean_all()?.to_scalar::<f32>()?;
/// assert!((mean - 0.3).abs() < 0.1, "{mean}");
/// // encode / decode are inverse maps (up to the solver tolerance)
/// let z = sampler.encode(&out.x)?.x;
/// assert_eq!(z.dims(), &[256, 2]);
/// # Ok::<(), sde_solvers::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct OdeSampler<'a, S: ?Sized, F: ?Sized> {
    sde: &'a S,
    score: &'a F,
    opts: OdeSamplerOptions,
}

impl<'a, S: Sde + ?Sized, F: ScoreFn + ?Sized> OdeSampler<'a, S, F> {
    /// A sampler for `sde` and `score`; checks `0 < sampling_eps < T` and the solver options.
    #[doc(alias = "get_ode_sampler")]
    pub fn new(sde: &'a S, score: &'a F, opts: OdeSamplerOptions) -> Result<Self> {
        let t_end = sde.t_end();
        if !(opts.sampling_eps > 0.0 && opts.sampling_eps < t_end) {
            return Err(Error::InvalidParameter {
                name: "sampling_eps",
                value: opts.sampling_eps,
                reason: "must lie in (0, T)",
            });
        }
        if !opts.solver_dtype.is_float() {
            return Err(Error::Unsupported(format!(
                "solver_dtype must be a float dtype, got {:?}",
                opts.solver_dtype
            )));
        }
        opts.method.validate()?;
        Ok(Self { sde, score, opts })
    }

    /// The options in use.
    pub fn options(&self) -> &OdeSamplerOptions {
        &self.opts
    }

    /// The probability-flow drift f̃(x, t) = f − ½ g² s in the data's dtype `dtype`, for a state
    /// in the solver's dtype.
    fn drift(&self, x: &Tensor, t: &Tensor, dtype: DType) -> Result<Tensor> {
        let xm = x.to_dtype(dtype)?;
        let tm = t.to_dtype(dtype)?;
        let (drift, _) = ReverseSde::new(self.sde, self.score, true).sde(&xm, &tm)?;
        // RK45 keeps seven stages: without `detach` each would keep a network's forward graph.
        Ok(drift.to_dtype(x.dtype())?.detach())
    }

    fn integrate(&self, x: &Tensor, t0: f64, t1: f64) -> Result<OdeSolution> {
        let dtype = x.dtype();
        if !dtype.is_float() {
            return Err(Error::Unsupported(format!(
                "ODE sampling needs float data, got {dtype:?}"
            )));
        }
        // The probability-flow drift acts sample by sample.
        let rhs = Rowwise(|x: &Tensor, t: &Tensor| self.drift(x, t, dtype));
        let state = x.to_dtype(self.opts.solver_dtype)?;
        let mut sol = self.opts.method.solve(&rhs, &state, t0, t1)?;
        sol.x = sol.x.to_dtype(dtype)?;
        Ok(sol)
    }

    /// Draws z ~ p_T ([`Sde::prior_sampling`]) of shape `[B, ...]` through `noise` and
    /// [`decode`](Self::decode)s it: the sampler of `get_ode_sampler(...)(model)`. Returns the
    /// samples (denoised if asked) in `dtype` and the NFE.
    pub fn sample<N: NoiseSource + ?Sized>(
        &self,
        shape: &Shape,
        device: &Device,
        dtype: DType,
        noise: &mut N,
    ) -> Result<OdeSolution> {
        let z = self.sde.prior_sampling(shape, device, dtype, noise)?;
        self.decode(&z)
    }

    /// Latent → data: integrates the probability-flow ODE from x(T) = `z` down to
    /// t = `sampling_eps`, then applies the denoising step if `denoise` is set
    /// (`ode_sampler(model, z=z)`).
    pub fn decode(&self, z: &Tensor) -> Result<OdeSolution> {
        let mut sol = self.integrate(z, self.sde.t_end(), self.opts.sampling_eps)?;
        if self.opts.denoise {
            sol.x = self.denoise(&sol.x)?;
            sol.nfe += 1; // the denoising step's score evaluation
        }
        Ok(sol)
    }

    /// Data → latent: integrates the probability-flow ODE from x(ε) = `x` up to T
    /// (ε = `sampling_eps`), giving the latent code z of the paper's Fig. 3 (no denoising).
    pub fn encode(&self, x: &Tensor) -> Result<OdeSolution> {
        self.integrate(x, self.opts.sampling_eps, self.sde.t_end())
    }

    /// The denoising step at t = ε: x̄ = x − rev_f with (rev_f, rev_G) the discretised reverse
    /// SDE, rev_f = f_ε(x) − G_ε² s(x, ε) (a reverse-diffusion predictor step returning its
    /// mean, as `denoise_update_fn`).
    pub fn denoise(&self, x: &Tensor) -> Result<Tensor> {
        let eps = sde_core::time_tensor(self.opts.sampling_eps, x.dim(0)?, x.device(), x.dtype())?;
        let (rev_f, _) = ReverseSde::new(self.sde, self.score, false).discretize(x, &eps)?;
        let out = (x - rev_f)?.detach();
        sde_core::ensure_finite(&out, String::new).map_err(|_| Error::NonFinite {
            what: "denoised sample".into(),
            step: 1,
            t: self.opts.sampling_eps,
        })?;
        Ok(out)
    }
}
