//! Seeded noise for the whole workspace.
//!
//! Candle's CPU random generator cannot be seeded (`Device::Cpu.set_seed` errors), so every
//! random draw in scoresde-rs goes through a [`NoiseSource`] that the caller owns:
//!
//! - any [`rand::Rng`] (`StdRng::seed_from_u64(s)`): noise is drawn on the host and moved to the
//!   tensor's device. The same seed gives bit-identical samples.
//! - [`PerSampleNoise`]: counter-based per-sample streams, so that sample `i` with seed `s` is
//!   bit-identical whatever the batch size it is generated in.
//! - [`BlockNoise`]: the fast host source: counter-based blocks of draws filled on all cores
//!   (the float32 normals by `sde_kernels::normal`), with results that depend on the seed only,
//!   not on the number of threads.
//! - [`DeviceNoise`]: the accelerator's own seeded generator (fast on CUDA; refused on CPU,
//!   whose generator cannot be seeded).

use candle_core::{DType, Device, Shape, Tensor};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

use crate::error::{Error, Result};

mod brownian;

pub use brownian::{BrownianNoise, BrownianTree};

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

/// A host buffer of a float dtype filled by `fill32` (f32, f16 and bf16, converted afterwards)
/// or `fill64` (f64), then moved to the device.
fn host_tensor(
    shape: &Shape,
    device: &Device,
    dtype: DType,
    fill32: impl FnOnce(&mut [f32]),
    fill64: impl FnOnce(&mut [f64]),
) -> Result<Tensor> {
    let n = shape.elem_count();
    let t = match dtype {
        DType::F64 => {
            let mut v = vec![0f64; n];
            fill64(&mut v);
            Tensor::from_vec(v, shape, &Device::Cpu)?
        }
        DType::F32 | DType::F16 | DType::BF16 => {
            let mut v = vec![0f32; n];
            fill32(&mut v);
            Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dtype)?
        }
        other => {
            return Err(Error::DType {
                func: "NoiseSource (randn / rand_uniform / rademacher)",
                arg: "dtype",
                expected: "a float dtype (f16, bf16, f32 or f64)",
                got: other,
            })
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
            |v| {
                v.iter_mut()
                    .for_each(|x| *x = StandardNormal.sample(&mut **rng.borrow_mut()))
            },
            |v| {
                v.iter_mut()
                    .for_each(|x| *x = StandardNormal.sample(&mut **rng.borrow_mut()))
            },
        )
    }

    fn rand_uniform(&mut self, shape: &Shape, device: &Device, dtype: DType) -> Result<Tensor> {
        let rng = std::cell::RefCell::new(self);
        host_tensor(
            shape,
            device,
            dtype,
            |v| v.iter_mut().for_each(|x| *x = rng.borrow_mut().random()),
            |v| v.iter_mut().for_each(|x| *x = rng.borrow_mut().random()),
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
        // SplitMix64-style mixing of (seed, sample, counter) into one 64-bit key. The seed is
        // mixed on its own first: adding the sample to a merely xored seed made (seed 1,
        // sample k + 1) the stream of (seed 0, sample k), so runs with adjacent seeds shared
        // their samples shifted by one.
        let mut z = splitmix64(&mut self.seed.clone());
        for w in [sample, self.counter] {
            z = z.wrapping_add(w).wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
        }
        rand::rngs::StdRng::seed_from_u64(z)
    }

    /// Fills `out` (samples of `per` values) from each sample's own stream.
    fn fill_samples<T: Send>(
        &self,
        out: &mut [T],
        per: usize,
        value: impl Fn(&mut rand::rngs::StdRng) -> T + Sync,
    ) {
        fill_chunks(out, per, false, |first, chunk| {
            for (i, sample) in chunk.chunks_mut(per.max(1)).enumerate() {
                let mut rng = self.stream(self.offset + (first + i) as u64);
                for v in sample.iter_mut() {
                    *v = value(&mut rng);
                }
            }
        });
    }

    /// Fills `[B, ...]` sample by sample from each sample's own stream, on several threads
    /// for large draws (the values do not depend on the thread count).
    fn draw(
        &mut self,
        shape: &Shape,
        device: &Device,
        dtype: DType,
        f32_value: impl Fn(&mut rand::rngs::StdRng) -> f32 + Sync,
        f64_value: impl Fn(&mut rand::rngs::StdRng) -> f64 + Sync,
    ) -> Result<Tensor> {
        let dims = shape.dims();
        let Some((_, rest)) = dims.split_first() else {
            return Err(Error::Rank {
                func: "PerSampleNoise",
                arg: "shape",
                expected: "≥ 1 ([B, ...]: one stream per sample)",
                got: shape.clone(),
            });
        };
        let per: usize = rest.iter().product();
        let t = host_tensor(
            shape,
            device,
            dtype,
            |v| self.fill_samples(v, per, f32_value),
            |v| self.fill_samples(v, per, f64_value),
        )?;
        self.counter += 1;
        Ok(t)
    }
}

/// At most this many tasks per draw (a constant, so that the task layout depends on the draw's
/// size only).
const MAX_TASKS: usize = 64;

/// The work [`sde_kernels::parallel`] is told per value drawn: draws under about 130 000 values
/// (a sampler step of 10 000 2-D points among them) ran slower when split over threads.
const WORK_PER_VALUE: usize = 3;

/// Runs `work(first_unit, chunk)` over `out`, cut into units of `per` values (the last one may
/// be partial) and grouped into tasks of consecutive whole units by the draw's size alone
/// ([`sde_kernels::parallel::row_groups`]); large draws run their tasks on the kernels' pool
/// unless `serial`. Callers derive every value from its unit's index, so the result does not
/// depend on the thread count, nor on `serial`.
fn fill_chunks<T: Send>(
    out: &mut [T],
    per: usize,
    serial: bool,
    work: impl Fn(usize, &mut [T]) + Sync,
) {
    let per = per.max(1);
    if serial {
        work(0, out);
        return;
    }
    let ranges = sde_kernels::parallel::row_groups(out.len(), per, MAX_TASKS);
    let total_work = WORK_PER_VALUE.saturating_mul(out.len());
    sde_kernels::parallel::for_each_range_mut(out, &ranges, total_work, |r, chunk| {
        work(r.start / per, chunk)
    });
}

/// Normals by the ziggurat method of `rand_distr`, uniforms by `rand`, each sample from its own
/// stream.
impl NoiseSource for PerSampleNoise {
    fn randn(&mut self, shape: &Shape, device: &Device, dtype: DType) -> Result<Tensor> {
        self.draw(
            shape,
            device,
            dtype,
            |r| StandardNormal.sample(r),
            |r| StandardNormal.sample(r),
        )
    }
    fn rand_uniform(&mut self, shape: &Shape, device: &Device, dtype: DType) -> Result<Tensor> {
        self.draw(
            shape,
            device,
            dtype,
            |r| r.random::<f32>(),
            |r| r.random::<f64>(),
        )
    }
}

/// The next output of SplitMix64 (Steele, Lea & Flood, 2014) from `state`: the seeding
/// generator of the xoshiro streams, and a good 64-bit mixer for deriving stream keys.
///
/// $z \leftarrow \text{state} + \texttt{0x9E3779B97F4A7C15}$, then
/// $z \leftarrow (z \oplus z \gg 30) \cdot \texttt{0xBF58476D1CE4E5B9}$,
/// $z \leftarrow (z \oplus z \gg 27) \cdot \texttt{0x94D049BB133111EB}$, output $z \oplus z \gg 31$.
pub fn splitmix64(state: &mut u64) -> u64 {
    sde_kernels::normal::splitmix64(state)
}

/// xoshiro256++ (Blackman & Vigna, 2018), seeded through SplitMix64: a small, fast generator
/// with 256 bits of state, one independent stream per block of [`BlockNoise`].
#[derive(Debug, Clone)]
struct Xoshiro256PlusPlus([u64; 4]);

impl Xoshiro256PlusPlus {
    fn new(mut seed: u64) -> Self {
        let mut s = [0u64; 4];
        for v in &mut s {
            *v = splitmix64(&mut seed);
        }
        Self(s)
    }
}

impl rand::RngCore for Xoshiro256PlusPlus {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }
    fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let r = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        r
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for c in dst.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// The fast seeded host source: every call (a *draw*) is cut into blocks of
/// [`BlockNoise::BLOCK`] values, block j of draw n comes from its own generator streams keyed
/// by (seed, n, j), and large draws fill their blocks on several threads. The values depend on
/// the seed and the sequence of calls only: the same on 1 or 16 threads.
///
/// Float32 normals (also f16 / bf16, converted) come from eight xoshiro128++ streams per block
/// through a vectorised Box–Muller transform (`sde_kernels::normal`),
/// z = √(−2 ln u₁) (cos θ, sin θ), exact in the tails out to 6.5 σ; float64 normals from the
/// ziggurat method of `rand_distr` on one xoshiro256++ stream per block, uniforms from the same
/// stream. Use it on the CPU when speed matters (float32 normals are about ten times faster
/// than a `StdRng`'s); use [`PerSampleNoise`] when a sample must not change with the batch size.
/// ```
/// use candle_core::{DType, Device, Shape};
/// use sde_core::noise::{BlockNoise, NoiseSource};
/// let shape = Shape::from((10_000, 2));
/// let a = BlockNoise::new(3).randn(&shape, &Device::Cpu, DType::F32)?;
/// let b = BlockNoise::new(3).with_threads(1).randn(&shape, &Device::Cpu, DType::F32)?;
/// assert_eq!(a.flatten_all()?.to_vec1::<f32>()?, b.flatten_all()?.to_vec1::<f32>()?);
/// # Ok::<(), sde_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct BlockNoise {
    seed: u64,
    draws: u64,
    /// Fill every draw on the calling thread (`with_threads(1)`).
    serial: bool,
}

impl BlockNoise {
    /// Values per block (one generator stream each).
    pub const BLOCK: usize = 4096;

    /// A source for `seed`, filling large draws on the kernels' thread pool
    /// (`sde_kernels::parallel`: candle's CPU threads).
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            draws: 0,
            serial: false,
        }
    }

    /// `threads == 1` (or 0) fills every draw on the calling thread; any other value lets large
    /// draws use the kernels' pool, whose size candle sets (`RAYON_NUM_THREADS`). The values
    /// do not change either way.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.serial = threads <= 1;
        self
    }

    /// Number of draws made so far (each call to a `NoiseSource` method is one draw).
    pub fn draws(&self) -> u64 {
        self.draws
    }

    /// Fills `out` block by block for the draw keyed `key`; `value` draws one element from a
    /// block's stream.
    fn fill<T: Send>(
        key: u64,
        serial: bool,
        out: &mut [T],
        value: impl Fn(&mut Xoshiro256PlusPlus) -> T + Sync,
    ) {
        fill_chunks(out, Self::BLOCK, serial, |first, chunk| {
            for (j, blk) in chunk.chunks_mut(Self::BLOCK).enumerate() {
                let mut r = Xoshiro256PlusPlus::new(Self::block_key(key, first + j));
                for v in blk.iter_mut() {
                    *v = value(&mut r);
                }
            }
        });
    }

    /// The key of the next draw (and counts it).
    fn next_key(&mut self) -> u64 {
        let key = self
            .seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(self.draws.wrapping_mul(0xD1B5_4A32_D192_ED03));
        self.draws += 1;
        key
    }

    /// The key of block `j` of the draw keyed `key`.
    fn block_key(key: u64, j: usize) -> u64 {
        key ^ (j as u64).wrapping_mul(0xA24B_AED4_963E_E407)
    }
}

impl NoiseSource for BlockNoise {
    /// Float32 (and f16 / bf16, converted): the vectorised Box–Muller kernel, eight
    /// xoshiro128++ streams per block. Float64: the ziggurat method of `rand_distr` on one
    /// xoshiro256++ stream per block.
    fn randn(&mut self, shape: &Shape, device: &Device, dtype: DType) -> Result<Tensor> {
        let (key, serial) = (self.next_key(), self.serial);
        host_tensor(
            shape,
            device,
            dtype,
            |v| {
                fill_chunks(v, Self::BLOCK, serial, |first, chunk| {
                    for (j, blk) in chunk.chunks_mut(Self::BLOCK).enumerate() {
                        sde_kernels::normal::fill_block(Self::block_key(key, first + j), blk);
                    }
                })
            },
            |v| Self::fill(key, serial, v, |r| StandardNormal.sample(r)),
        )
    }

    fn rand_uniform(&mut self, shape: &Shape, device: &Device, dtype: DType) -> Result<Tensor> {
        let (key, serial) = (self.next_key(), self.serial);
        host_tensor(
            shape,
            device,
            dtype,
            |v| Self::fill(key, serial, v, |r| r.random::<f32>()),
            |v| Self::fill(key, serial, v, |r| r.random::<f64>()),
        )
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
