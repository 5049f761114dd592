//! Seeded noise for the whole workspace.
//!
//! Candle's CPU random generator cannot be seeded (`Device::Cpu.set_seed` errors), so every
//! random draw in scoresde-rs goes through a [`NoiseSource`] that the caller owns:
//!
//! - any [`rand::Rng`] (`StdRng::seed_from_u64(s)`): noise is drawn on the host and moved to the
//!   tensor's device. The same seed gives bit-identical samples.
//! - [`PerSampleNoise`]: counter-based per-sample streams, so that sample `i` with seed `s` is
//!   bit-identical whatever the batch size it is generated in.
//! - [`DeviceNoise`]: the accelerator's own seeded generator (fast on CUDA; refused on CPU,
//!   whose generator cannot be seeded).

use candle_core::{DType, Device, Shape, Tensor};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

use crate::error::{Error, Result};

/// A source of the random tensors that samplers, losses and estimators draw.
///
/// Implemented for every [`rand::Rng`] (draws on the host), for [`PerSampleNoise`] and for
/// [`DeviceNoise`]. Implement it to replay recorded noise (the parity tests do).
pub trait NoiseSource {
    /// A tensor of i.i.d. standard normal draws, z ~ N(0, I) (`torch.randn`).
    fn randn(&mut self, shape: &Shape, device: &Device, dtype: DType) -> Result<Tensor>;
    /// A tensor of i.i.d. uniform draws on [0, 1) (`torch.rand`).
    fn rand_uniform(&mut self, shape: &Shape, device: &Device, dtype: DType) -> Result<Tensor>;
    /// A tensor of i.i.d. Rademacher draws (±1 with probability ½ each).
    fn rademacher(&mut self, shape: &Shape, device: &Device, dtype: DType) -> Result<Tensor> {
        let u = self.rand_uniform(shape, device, dtype)?;
        // 2·[u ≥ ½] − 1
        Ok(u.ge(0.5)?.to_dtype(dtype)?.affine(2.0, -1.0)?)
    }
}

/// z ~ N(0, I) with the shape, device and dtype of `x` (`torch.randn_like`).
pub fn randn_like<N: NoiseSource + ?Sized>(x: &Tensor, noise: &mut N) -> Result<Tensor> {
    noise.randn(x.shape(), x.device(), x.dtype())
}

/// Host buffer of a float dtype, moved to the device afterwards.
fn host_tensor(
    shape: &Shape,
    device: &Device,
    dtype: DType,
    mut draw32: impl FnMut() -> f32,
    mut draw64: impl FnMut() -> f64,
) -> Result<Tensor> {
    let n = shape.elem_count();
    let t = match dtype {
        DType::F64 => Tensor::from_vec(
            (0..n).map(|_| draw64()).collect::<Vec<_>>(),
            shape,
            &Device::Cpu,
        )?,
        DType::F32 | DType::F16 | DType::BF16 => Tensor::from_vec(
            (0..n).map(|_| draw32()).collect::<Vec<_>>(),
            shape,
            &Device::Cpu,
        )?
        .to_dtype(dtype)?,
        other => {
            return Err(Error::Unsupported(format!(
                "random draws need a float dtype, got {other:?}"
            )))
        }
    };
    Ok(t.to_device(device)?)
}

impl<R: Rng + ?Sized> NoiseSource for R {
    fn randn(&mut self, shape: &Shape, device: &Device, dtype: DType) -> Result<Tensor> {
        // Two closures borrow the same RNG; only one of them is called for a given dtype.
        let rng = std::cell::RefCell::new(self);
        host_tensor(
            shape,
            device,
            dtype,
            || StandardNormal.sample(&mut **rng.borrow_mut()),
            || StandardNormal.sample(&mut **rng.borrow_mut()),
        )
    }

    fn rand_uniform(&mut self, shape: &Shape, device: &Device, dtype: DType) -> Result<Tensor> {
        let rng = std::cell::RefCell::new(self);
        host_tensor(
            shape,
            device,
            dtype,
            || rng.borrow_mut().random::<f32>(),
            || rng.borrow_mut().random::<f64>(),
        )
    }
}

/// Counter-based per-sample noise: the draws for sample `i` of a batch come from their own
/// stream keyed by `(seed, offset + i, draw counter)`, so a sample does not change when the
/// batch size changes.
///
/// Generating 64 samples as one batch, or as four batches of 16 with
/// `PerSampleNoise::new(seed).with_offset(16 * k)`, gives bit-identical samples.
///
/// ```
/// use candle_core::{DType, Device, Shape};
/// use sde_core::noise::{NoiseSource, PerSampleNoise};
/// let big = PerSampleNoise::new(7).randn(&Shape::from((4, 2)), &Device::Cpu, DType::F32)?;
/// let tail = PerSampleNoise::new(7).with_offset(2).randn(&Shape::from((2, 2)), &Device::Cpu, DType::F32)?;
/// assert_eq!(big.narrow(0, 2, 2)?.to_vec2::<f32>()?, tail.to_vec2::<f32>()?);
/// # Ok::<(), sde_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct PerSampleNoise {
    seed: u64,
    offset: u64,
    counter: u64,
}

impl PerSampleNoise {
    /// Streams for samples `0, 1, …` under `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            offset: 0,
            counter: 0,
        }
    }

    /// The first sample of the next batches is global sample `offset`.
    pub fn with_offset(mut self, offset: u64) -> Self {
        self.offset = offset;
        self
    }

    /// Number of draws made so far (each call to a `NoiseSource` method is one draw).
    pub fn draws(&self) -> u64 {
        self.counter
    }

    fn stream(&self, sample: u64) -> rand::rngs::StdRng {
        // SplitMix64-style mixing of (seed, sample, counter) into one 64-bit key.
        let mut z = self.seed ^ 0x9E37_79B9_7F4A_7C15;
        for w in [sample, self.counter] {
            z = z.wrapping_add(w).wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
        }
        rand::rngs::StdRng::seed_from_u64(z)
    }

    fn draw(
        &mut self,
        shape: &Shape,
        device: &Device,
        dtype: DType,
        f: impl Fn(&mut rand::rngs::StdRng, &Shape, DType) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let dims = shape.dims();
        let Some((&b, rest)) = dims.split_first() else {
            return Err(Error::Unsupported(
                "PerSampleNoise needs a batched shape [B, ...]".into(),
            ));
        };
        let per = Shape::from(rest.to_vec());
        let mut parts = Vec::with_capacity(b);
        for i in 0..b {
            let mut rng = self.stream(self.offset + i as u64);
            parts.push(f(&mut rng, &per, dtype)?.unsqueeze(0)?);
        }
        self.counter += 1;
        let t = if parts.is_empty() {
            Tensor::zeros(shape, dtype, &Device::Cpu)?
        } else {
            Tensor::cat(&parts, 0)?
        };
        Ok(t.to_device(device)?)
    }
}

impl NoiseSource for PerSampleNoise {
    fn randn(&mut self, shape: &Shape, device: &Device, dtype: DType) -> Result<Tensor> {
        self.draw(shape, device, dtype, |r, s, d| r.randn(s, &Device::Cpu, d))
    }
    fn rand_uniform(&mut self, shape: &Shape, device: &Device, dtype: DType) -> Result<Tensor> {
        self.draw(shape, device, dtype, |r, s, d| {
            r.rand_uniform(s, &Device::Cpu, d)
        })
    }
}

/// The accelerator's own generator, seeded by the caller: the fastest source on CUDA/Metal.
///
/// Refused on CPU, whose generator cannot be seeded (use any seeded [`rand::Rng`] there).
#[derive(Debug, Clone)]
pub struct DeviceNoise {
    device: Device,
}

impl DeviceNoise {
    /// Seeds `device`'s generator with `seed`.
    pub fn new(device: &Device, seed: u64) -> Result<Self> {
        if device.is_cpu() {
            return Err(Error::Unsupported(
                "DeviceNoise: candle's CPU generator cannot be seeded; pass a seeded rand::Rng instead"
                    .into(),
            ));
        }
        device.set_seed(seed)?;
        Ok(Self {
            device: device.clone(),
        })
    }
}

impl NoiseSource for DeviceNoise {
    fn randn(&mut self, shape: &Shape, device: &Device, dtype: DType) -> Result<Tensor> {
        if !device.same_device(&self.device) {
            return Err(Error::Unsupported(
                "DeviceNoise asked for a tensor on another device".into(),
            ));
        }
        Ok(Tensor::randn(0f32, 1f32, shape, device)?.to_dtype(dtype)?)
    }
    fn rand_uniform(&mut self, shape: &Shape, device: &Device, dtype: DType) -> Result<Tensor> {
        if !device.same_device(&self.device) {
            return Err(Error::Unsupported(
                "DeviceNoise asked for a tensor on another device".into(),
            ));
        }
        Ok(Tensor::rand(0f32, 1f32, shape, device)?.to_dtype(dtype)?)
    }
}
