//! Weight initialisation as in the reference (`models/layers.py`), and a seeded
//! [`VarBuilder`] that makes building a network from scratch reproducible.
//!
//! Candle's [`VarMap`] creates missing variables with `Tensor::rand`/`randn`, which on the CPU
//! draw from the unseeded thread RNG. [`seeded_var_builder`] wraps a `VarMap` in a
//! [`SeededBackend`] that draws every new variable on the host from a generator seeded by the
//! caller's `seed` **and the variable's full path** (`all_modules.4.Conv_0.weight`), so a
//! parameter's initial value does not depend on the order in which a network asks for its
//! parameters, and the same seed always gives bit-identical parameters on every machine.

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::init::{FanInOut, NormalOrUniform};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::SeedableRng;
use sde_core::noise::NoiseSource;

/// Fan-in and fan-out of a weight of `shape` as the reference's `variance_scaling` computes them
/// (`in_axis = 1`, `out_axis = 0`, receptive field = product of the remaining dims):
/// $\mathrm{fan\_in} = s_1 r$, $\mathrm{fan\_out} = s_0 r$, $r = \prod_{i\ge2} s_i$.
///
/// For a NIN weight `W` of shape `[in, out]` this swaps in and out, as in the reference; the
/// `fan_avg` mode used everywhere is symmetric, so it does not matter there.
pub fn compute_fans(shape: &Shape) -> (f64, f64) {
    let dims = shape.dims();
    match dims.len() {
        0 => (1.0, 1.0),
        1 => (dims[0] as f64, dims[0] as f64),
        _ => {
            let rf: usize = dims[2..].iter().product();
            ((dims[1] * rf) as f64, (dims[0] * rf) as f64)
        }
    }
}

/// Half-width of the reference's `default_init(scale)` =
/// `variance_scaling(scale, 'fan_avg', 'uniform')`:
/// $b = \sqrt{3\,\mathrm{scale} / ((\mathrm{fan\_in}+\mathrm{fan\_out})/2)}$, weights $\sim U(-b, b)$.
/// A `scale` of 0 is replaced by `1e-10`, as in the reference.
pub fn default_init_bound(scale: f64, shape: &Shape) -> f64 {
    let scale = if scale == 0.0 { 1e-10 } else { scale };
    let (fan_in, fan_out) = compute_fans(shape);
    let variance = scale / ((fan_in + fan_out) / 2.0);
    (3.0 * variance).sqrt()
}

/// The reference's `default_init(scale)` (DDPM's initialisation) for a weight of `shape`, as a
/// candle [`Init`] hint: `Uniform { lo: -b, up: b }` with $b$ from [`default_init_bound`].
#[doc(alias = "variance_scaling")]
pub fn default_init(scale: f64, shape: &Shape) -> Init {
    let b = default_init_bound(scale, shape);
    Init::Uniform { lo: -b, up: b }
}

/// A [`SimpleBackend`] over a [`VarMap`] that creates missing variables from a seeded host RNG.
///
/// Existing variables are returned as they are (shape-checked); a missing one is drawn according
/// to its [`Init`] hint (`Const`, `Uniform`, `Randn`, `Kaiming` with PyTorch's gains) from a
/// `StdRng` seeded with `splitmix64(seed ^ fnv1a(path))`, created on the host in `f64`, cast to
/// the requested dtype, moved to the device and inserted into the `VarMap` as a trainable
/// [`Var`].
#[derive(Clone)]
pub struct SeededBackend {
    varmap: VarMap,
    seed: u64,
}

impl SeededBackend {
    /// Wraps `varmap` (cloning the handle: variables land in the caller's map).
    pub fn new(varmap: &VarMap, seed: u64) -> Self {
        Self {
            varmap: varmap.clone(),
            seed,
        }
    }

    /// The seed of the generator used for the variable at `path`.
    pub fn seed_for(&self, path: &str) -> u64 {
        splitmix64(self.seed ^ fnv1a(path.as_bytes()))
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Draws a tensor for `init` on the host from `rng` (in `f64`), then casts and moves it.
pub fn draw_init<R: rand::Rng + ?Sized>(
    init: Init,
    shape: &Shape,
    dtype: DType,
    device: &Device,
    rng: &mut R,
) -> candle_core::Result<Tensor> {
    let host = Device::Cpu;
    let to_candle = |e: sde_core::Error| candle_core::Error::Msg(e.to_string());
    let t = match init {
        Init::Const(c) => Tensor::full(c, shape, &host)?,
        Init::Uniform { lo, up } => rng
            .rand_uniform(shape, &host, DType::F64)
            .map_err(to_candle)?
            .affine(up - lo, lo)?,
        Init::Randn { mean, stdev } => rng
            .randn(shape, &host, DType::F64)
            .map_err(to_candle)?
            .affine(stdev, mean)?,
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let fan = match fan {
                FanInOut::FanIn => FanInOut::FanIn.for_shape(shape),
                FanInOut::FanOut => FanInOut::FanOut.for_shape(shape),
            }
            .max(1);
            let std = non_linearity.gain() / (fan as f64).sqrt();
            match dist {
                NormalOrUniform::Uniform => {
                    let b = 3f64.sqrt() * std;
                    rng.rand_uniform(shape, &host, DType::F64)
                        .map_err(to_candle)?
                        .affine(2.0 * b, -b)?
                }
                NormalOrUniform::Normal => rng
                    .randn(shape, &host, DType::F64)
                    .map_err(to_candle)?
                    .affine(std, 0.0)?,
            }
        }
    };
    t.to_dtype(dtype)?.to_device(device)
}

impl SimpleBackend for SeededBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut data = self
            .varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("VarMap mutex poisoned".into()))?;
        if let Some(v) = data.get(name) {
            if v.shape() != &s {
                candle_core::bail!("shape mismatch on {name}: {s:?} <> {:?}", v.shape())
            }
            return v.as_tensor().to_dtype(dtype);
        }
        let mut rng = StdRng::seed_from_u64(self.seed_for(name));
        let t = draw_init(h, &s, dtype, dev, &mut rng)?;
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(out)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let data = self
            .varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("VarMap mutex poisoned".into()))?;
        match data.get(name) {
            Some(v) => v.as_tensor().to_dtype(dtype),
            None => candle_core::bail!("no variable `{name}` in the VarMap"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap
            .data()
            .lock()
            .map(|d| d.contains_key(name))
            .unwrap_or(false)
    }
}

/// A [`VarBuilder`] that creates every missing parameter in `varmap` from `seed`
/// (see [`SeededBackend`]): the seeded counterpart of `VarBuilder::from_varmap`.
///
/// ```
/// use candle_core::{DType, Device};
/// let vm = candle_nn::VarMap::new();
/// let vb = score_nets::init::seeded_var_builder(&vm, 7, DType::F32, &Device::Cpu);
/// let w = vb.get_with_hints((4, 3), "w", candle_nn::Init::Randn { mean: 0.0, stdev: 1.0 })?;
/// let vm2 = candle_nn::VarMap::new();
/// let vb2 = score_nets::init::seeded_var_builder(&vm2, 7, DType::F32, &Device::Cpu);
/// let w2 = vb2.get_with_hints((4, 3), "w", candle_nn::Init::Randn { mean: 0.0, stdev: 1.0 })?;
/// assert_eq!(w.to_vec2::<f32>()?, w2.to_vec2::<f32>()?);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn seeded_var_builder(
    varmap: &VarMap,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> VarBuilder<'static> {
    VarBuilder::from_backend(
        Box::new(SeededBackend::new(varmap, seed)),
        dtype,
        device.clone(),
    )
}
