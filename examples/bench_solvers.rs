//! Bench binary for the PC sampler: prints one line per measure.
//!
//! ```text
//! cargo run --release --example bench_solvers            # full size (about a minute)
//! cargo run --release --example bench_solvers -- --quick # 100 steps
//! ```
//!
//! The measure is the reference's `bench_ref.py` case (iii): `sampling.get_pc_sampler` with
//! ReverseDiffusionPredictor + LangevinCorrector (snr 0.16, n_steps_each 1), VE SDE
//! (σ_min 0.01, σ_max 50, N = 1000, ε = 1e-5), the exact score of a 2-D mixture of 8 Gaussians
//! on a circle (radius 4, std 0.2), 10 000 samples × 1000 steps, CPU, float32, denoise on.
//! Reference (same kind of 2-core machine, torch with 2 threads): 5.87 s.
//!
//! Lines printed:
//! - `sde-core score`: the sampler with `sde_core::analytic::GaussianMixtureScore` (f64 host
//!   loop, generic per-sample times) and a seeded `StdRng`;
//! - `fused score`: the sampler with [`toy::FusedMixtureScore`], the same exact score with the
//!   per-time constants hoisted (all samples share t inside a sampler step) on 2 threads, and
//!   [`toy::BlockNoise`], a seeded block-parallel noise source. The reference's bench also
//!   supplies its own score (a torch module), so this is the like-for-like figure.

use std::time::Instant;

use candle_core::{DType, Device};
use rand::SeedableRng;
use sde_core::analytic::{GaussianMixture, GaussianMixtureScore};
use sde_core::VeSde;
use sde_solvers::corrector::LangevinCorrector;
use sde_solvers::pc::PcSampler;
use sde_solvers::predictor::ReverseDiffusionPredictor;

/// The toy problem's exact score and a fast seeded noise source (shared with
/// `benches/solvers.rs`).
pub mod toy {
    use candle_core::{DType, Device, Shape, Storage, Tensor};
    use sde_core::analytic::GaussianMixture;
    use sde_core::noise::NoiseSource;
    use sde_core::{ScoreFn, Sde};

    /// Exact score of an isotropic Gaussian mixture Σ_k w_k N(μ_k, s_k² I) under an SDE with
    /// kernel N(a(t) x₀, σ(t)² I): s(x) = Σ_k r_k(x) (a μ_k − x) / v_k with v_k = a² s_k² + σ²
    /// and responsibilities r_k ∝ w_k v_k^{−D/2} exp(−‖x − a μ_k‖² / (2 v_k)).
    ///
    /// Per-time constants (a μ_k, 1/v_k, log-normalisers) are computed once per distinct t;
    /// f64 arithmetic with a polynomial e^x (relative error ~2e-9), output in f32; 2 threads.
    pub struct FusedMixtureScore<S> {
        sde: S,
        logw: Vec<f64>,
        means: Vec<Vec<f64>>,
        vars: Vec<f64>,
        dim: usize,
        threads: usize,
    }

    impl<S: Sde> FusedMixtureScore<S> {
        /// The mixture must be isotropic per component (one std for every dimension).
        pub fn new(sde: S, gmm: &GaussianMixture) -> Self {
            Self {
                sde,
                logw: gmm.weights().iter().map(|w| w.ln()).collect(),
                means: gmm.means().to_vec(),
                vars: gmm.variances().iter().map(|v| v[0]).collect(),
                dim: gmm.dim(),
                threads: 2,
            }
        }

        fn consts(&self, t: f64) -> sde_core::Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
            let tt = Tensor::new(&[t], &Device::Cpu)?;
            let (a, s) = self.sde.marginal_coeffs(&tt)?;
            let a = a.to_vec1::<f64>()?[0];
            let s = s.to_vec1::<f64>()?[0];
            let k = self.logw.len();
            let mut amu = Vec::with_capacity(k * self.dim);
            let mut inv_v = Vec::with_capacity(k);
            let mut c = Vec::with_capacity(k);
            for i in 0..k {
                let v = a * a * self.vars[i] + s * s;
                amu.extend(self.means[i].iter().map(|m| a * m));
                inv_v.push(1.0 / v);
                c.push(self.logw[i] - 0.5 * self.dim as f64 * v.ln());
            }
            Ok((amu, inv_v, c))
        }
    }

    /// e^x for x ≤ 0 (responsibilities), ~2e-9 relative error: x = n ln2 + r with
    /// |r| ≤ ln2/2, e^r by its degree-8 Taylor polynomial, 2^n through the exponent bits.
    #[inline(always)]
    fn exp_neg(x: f64) -> f64 {
        let x = x.max(-700.0);
        // round(x / ln 2) with the 1.5·2^52 trick (vectorizes; no libm call)
        const MAGIC: f64 = 6_755_399_441_055_744.0;
        let n = (x * std::f64::consts::LOG2_E + MAGIC) - MAGIC;
        let r = x - n * 0.693_147_180_369_123_8 - n * 1.908_214_929_270_587_7e-10;
        let p = 1.0
            + r * (1.0
                + r * (0.5
                    + r * (1.0 / 6.0
                        + r * (1.0 / 24.0
                            + r * (1.0 / 120.0
                                + r * (1.0 / 720.0 + r * (1.0 / 5040.0 + r * (1.0 / 40320.0))))))));
        let bits = ((n as i64 + 1023) as u64) << 52;
        p * f64::from_bits(bits)
    }

    /// Score of one block of points; `K` components, `D` dimensions (const for the hot case).
    #[inline(always)]
    fn eval_block_inner(
        x: &[f32],
        out: &mut [f32],
        dim: usize,
        amu: &[f64],
        inv_v: &[f64],
        c: &[f64],
    ) {
        let k = inv_v.len();
        if k == 8 && dim == 2 {
            let mut mx = [0.0f64; 8];
            let mut my = [0.0f64; 8];
            let mut iv = [0.0f64; 8];
            let mut cc = [0.0f64; 8];
            for i in 0..8 {
                mx[i] = amu[2 * i];
                my[i] = amu[2 * i + 1];
                iv[i] = inv_v[i];
                cc[i] = c[i];
            }
            // Blocks of P points in structure-of-arrays form: every loop runs over the P
            // lanes, which the compiler vectorizes.
            const P: usize = 8;
            let mut xb = x.chunks_exact(2 * P);
            let mut ob = out.chunks_exact_mut(2 * P);
            for (xc, oc) in (&mut xb).zip(&mut ob) {
                let mut px = [0.0f64; P];
                let mut py = [0.0f64; P];
                for p in 0..P {
                    px[p] = xc[2 * p] as f64;
                    py[p] = xc[2 * p + 1] as f64;
                }
                let mut l = [[0.0f64; P]; 8];
                let mut best = [f64::NEG_INFINITY; P];
                for i in 0..8 {
                    for p in 0..P {
                        let (dx, dy) = (px[p] - mx[i], py[p] - my[i]);
                        l[i][p] = cc[i] - 0.5 * (dx * dx + dy * dy) * iv[i];
                        best[p] = best[p].max(l[i][p]);
                    }
                }
                let mut z = [0.0f64; P];
                let mut ax = [0.0f64; P];
                let mut ay = [0.0f64; P];
                for i in 0..8 {
                    for p in 0..P {
                        let r = exp_neg(l[i][p] - best[p]);
                        z[p] += r;
                        let rv = r * iv[i];
                        ax[p] += rv * (mx[i] - px[p]);
                        ay[p] += rv * (my[i] - py[p]);
                    }
                }
                for p in 0..P {
                    oc[2 * p] = (ax[p] / z[p]) as f32;
                    oc[2 * p + 1] = (ay[p] / z[p]) as f32;
                }
            }
            for (xp, op) in xb
                .remainder()
                .chunks_exact(2)
                .zip(ob.into_remainder().chunks_exact_mut(2))
            {
                let (px, py) = (xp[0] as f64, xp[1] as f64);
                let mut l = [0.0f64; 8];
                let mut best = f64::NEG_INFINITY;
                for i in 0..8 {
                    let (dx, dy) = (px - mx[i], py - my[i]);
                    l[i] = cc[i] - 0.5 * (dx * dx + dy * dy) * iv[i];
                    best = best.max(l[i]);
                }
                let (mut z, mut ax, mut ay) = (0.0, 0.0, 0.0);
                for i in 0..8 {
                    let r = exp_neg(l[i] - best);
                    z += r;
                    let rv = r * iv[i];
                    ax += rv * (mx[i] - px);
                    ay += rv * (my[i] - py);
                }
                op[0] = (ax / z) as f32;
                op[1] = (ay / z) as f32;
            }
            return;
        }
        let mut l = vec![0.0f64; k];
        let mut acc = vec![0.0f64; dim];
        for (xp, op) in x.chunks(dim).zip(out.chunks_mut(dim)) {
            let mut best = f64::NEG_INFINITY;
            for i in 0..k {
                let mut d2 = 0.0;
                for j in 0..dim {
                    let d = xp[j] as f64 - amu[i * dim + j];
                    d2 += d * d;
                }
                l[i] = c[i] - 0.5 * d2 * inv_v[i];
                best = best.max(l[i]);
            }
            acc.iter_mut().for_each(|a| *a = 0.0);
            let mut z = 0.0;
            for i in 0..k {
                let r = exp_neg(l[i] - best);
                z += r;
                let rv = r * inv_v[i];
                for j in 0..dim {
                    acc[j] += rv * (amu[i * dim + j] - xp[j] as f64);
                }
            }
            for j in 0..dim {
                op[j] = (acc[j] / z) as f32;
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn eval_block_avx2(
        x: &[f32],
        out: &mut [f32],
        dim: usize,
        amu: &[f64],
        inv_v: &[f64],
        c: &[f64],
    ) {
        eval_block_inner(x, out, dim, amu, inv_v, c)
    }

    /// Runtime dispatch: the AVX2+FMA build of the same loop where the CPU has it (as torch
    /// dispatches its kernels), the baseline x86-64 build otherwise.
    fn eval_block(x: &[f32], out: &mut [f32], dim: usize, amu: &[f64], inv_v: &[f64], c: &[f64]) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the required CPU features were detected at run time.
                unsafe { eval_block_avx2(x, out, dim, amu, inv_v, c) };
                return;
            }
        }
        eval_block_inner(x, out, dim, amu, inv_v, c)
    }

    impl<S: Sde> ScoreFn for FusedMixtureScore<S> {
        fn score(&self, x: &Tensor, t: &Tensor) -> sde_core::Result<Tensor> {
            let b = x.dim(0)?;
            let d = self.dim;
            if x.dtype() != DType::F32 || !x.device().is_cpu() || x.elem_count() != b * d {
                return Err(sde_core::Error::Unsupported(
                    "FusedMixtureScore: CPU f32 [B, D] only".into(),
                ));
            }
            let ts = sde_core::check_time(x, t, self.sde.t_end())?;
            let xs = x.flatten_all()?.to_vec1::<f32>()?;
            let mut out = vec![0f32; b * d];
            // Runs of equal t share their constants.
            let mut start = 0;
            while start < b {
                let mut end = start + 1;
                while end < b && ts[end] == ts[start] {
                    end += 1;
                }
                let (amu, inv_v, c) = self.consts(ts[start])?;
                let xr = &xs[start * d..end * d];
                let or = &mut out[start * d..end * d];
                let n = end - start;
                if n >= 2048 && self.threads > 1 {
                    let half = n.div_ceil(2) * d;
                    let (x1, x2) = xr.split_at(half);
                    let (o1, o2) = or.split_at_mut(half);
                    let (amu, inv_v, c) = (&amu, &inv_v, &c);
                    std::thread::scope(|sc| {
                        sc.spawn(move || eval_block(x2, o2, d, amu, inv_v, c));
                        eval_block(x1, o1, d, amu, inv_v, c);
                    });
                } else {
                    eval_block(xr, or, d, &amu, &inv_v, &c);
                }
                start = end;
            }
            Ok(Tensor::from_vec(out, x.shape(), x.device())?)
        }
    }

    /// xoshiro256++ (Blackman & Vigna), seeded through SplitMix64.
    struct Xoshiro([u64; 4]);

    impl Xoshiro {
        fn new(mut seed: u64) -> Self {
            let mut s = [0u64; 4];
            for v in &mut s {
                seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = seed;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                *v = z ^ (z >> 31);
            }
            Self(s)
        }
    }

    impl rand::RngCore for Xoshiro {
        fn next_u32(&mut self) -> u32 {
            (self.next_u64() >> 32) as u32
        }
        fn next_u64(&mut self) -> u64 {
            let s = &mut self.0;
            let r = (s[0].wrapping_add(s[3])).rotate_left(23).wrapping_add(s[0]);
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

    /// A seeded CPU noise source that fills blocks of 2048 draws in parallel: block j of draw
    /// n comes from xoshiro256++ seeded by (seed, n, j), so results do not depend on the
    /// number of threads. Normal draws use rand_distr's ziggurat (through sde-core).
    pub struct BlockNoise {
        seed: u64,
        draws: u64,
    }

    impl BlockNoise {
        /// A source for `seed`.
        pub fn new(seed: u64) -> Self {
            Self { seed, draws: 0 }
        }

        fn fill(
            &mut self,
            shape: &Shape,
            device: &Device,
            dtype: DType,
            normal: bool,
        ) -> sde_core::Result<Tensor> {
            const BLOCK: usize = 2048;
            let n = shape.elem_count();
            let mut out = vec![0f32; n];
            let key = self
                .seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(self.draws.wrapping_mul(0xD1B5_4A32_D192_ED03));
            self.draws += 1;
            let blocks: Vec<(usize, &mut [f32])> = out.chunks_mut(BLOCK).enumerate().collect();
            let work = |list: Vec<(usize, &mut [f32])>| -> sde_core::Result<()> {
                for (j, blk) in list {
                    let mut r = Xoshiro::new(key ^ (j as u64).wrapping_mul(0xA24B_AED4_963E_E407));
                    let s = Shape::from(blk.len());
                    let t = if normal {
                        r.randn(&s, &Device::Cpu, DType::F32)?
                    } else {
                        r.rand_uniform(&s, &Device::Cpu, DType::F32)?
                    };
                    let (st, layout) = t.storage_and_layout();
                    if let (Storage::Cpu(c), Some((a, b))) = (&*st, layout.contiguous_offsets()) {
                        blk.copy_from_slice(&c.as_slice::<f32>()?[a..b]);
                    }
                }
                Ok(())
            };
            if blocks.len() >= 2 {
                let mut even = Vec::new();
                let mut odd = Vec::new();
                for (j, b) in blocks {
                    if j % 2 == 0 {
                        even.push((j, b))
                    } else {
                        odd.push((j, b))
                    }
                }
                let (r1, r2) = std::thread::scope(|sc| {
                    let h = sc.spawn(|| work(odd));
                    let r1 = work(even);
                    (r1, h.join())
                });
                r1?;
                match r2 {
                    Ok(r) => r?,
                    Err(_) => {
                        return Err(sde_core::Error::Unsupported("noise thread panicked".into()))
                    }
                }
            } else {
                work(blocks)?;
            }
            Ok(Tensor::from_vec(out, shape, &Device::Cpu)?
                .to_dtype(dtype)?
                .to_device(device)?)
        }
    }

    impl NoiseSource for BlockNoise {
        fn randn(
            &mut self,
            shape: &Shape,
            device: &Device,
            dtype: DType,
        ) -> sde_core::Result<Tensor> {
            self.fill(shape, device, dtype, true)
        }
        fn rand_uniform(
            &mut self,
            shape: &Shape,
            device: &Device,
            dtype: DType,
        ) -> sde_core::Result<Tensor> {
            self.fill(shape, device, dtype, false)
        }
    }
}

const REFERENCE_S: f64 = 5.87;

use scoresde::report::cpu_seconds;

/// Median wall time and median CPU time over `reps` runs.
fn time_it(
    reps: usize,
    mut f: impl FnMut(u64) -> Result<(), Box<dyn std::error::Error>>,
) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let mut wall = Vec::new();
    let mut cpu = Vec::new();
    for rep in 0..reps {
        let c0 = cpu_seconds().unwrap_or(f64::NAN);
        let start = Instant::now();
        f(rep as u64)?;
        wall.push(start.elapsed().as_secs_f64());
        cpu.push(cpu_seconds().unwrap_or(f64::NAN) - c0);
    }
    wall.sort_by(|a, b| a.total_cmp(b));
    cpu.sort_by(|a, b| a.total_cmp(b));
    Ok((wall[wall.len() / 2], cpu[cpu.len() / 2]))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let quick = std::env::args().any(|a| a == "--quick");
    let (batch, steps) = if quick { (10_000, 100) } else { (10_000, 1000) };
    let reps = if quick { 1 } else { 3 };
    let sde = VeSde::new(0.01, 50.0, steps)?;
    let gmm = GaussianMixture::ring(8, 4.0, 0.2)?;
    let sampler = PcSampler::new(
        ReverseDiffusionPredictor::new(false),
        LangevinCorrector::new(0.16, 1)?,
    )
    .sampling_eps(1e-5);
    let report = |name: &str, (median, cpu): (f64, f64)| {
        let reps = if name.starts_with("part") || name.starts_with("sde-core") {
            1
        } else {
            reps
        };
        let full = median * 1000.0 / steps as f64;
        println!(
            "pc_sampler_gmm2d rd+langevin ve {batch}x{steps} cpu f32 [{name}]: {median:.3} s wall, {cpu:.2} s cpu (median of {reps} run(s); {:.3e} sample-steps/s; reference 5.87 s per 1000 steps; ratio {:.1}x)",
            (batch * steps) as f64 / median,
            REFERENCE_S / full
        );
    };

    let fused = toy::FusedMixtureScore::new(&sde, &gmm);
    let core_score = GaussianMixtureScore::new(&sde, gmm.clone());
    // The fused score is the same function: check it against sde-core's on a spread of points.
    {
        use sde_core::ScoreFn;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let x = gmm.sample(&(4096, 2).into(), &Device::Cpu, DType::F32, &mut rng)?;
        let x = (x.clone() + sde_core::noise::randn_like(&x, &mut rng)?.affine(3.0, 0.0)?)?;
        for t in [1e-5, 0.01, 0.3, 1.0] {
            let tt = sde_core::time_tensor(t, 4096, &Device::Cpu, DType::F32)?;
            let a = fused.score(&x, &tt)?;
            let b = core_score.score(&x, &tt)?;
            let err = (a - &b)?.abs()?.max_all()?.to_scalar::<f32>()?;
            let scale = b.abs()?.max_all()?.to_scalar::<f32>()?;
            if err > 1e-5 * scale {
                return Err(format!(
                    "fused score differs from sde-core's at t = {t}: {err} vs max {scale}"
                )
                .into());
            }
        }
    }
    let timing = time_it(reps, |seed| {
        let mut noise = toy::BlockNoise::new(seed);
        let out = sampler.sample(
            &sde,
            &fused,
            (batch, 2),
            &Device::Cpu,
            DType::F32,
            &mut noise,
        )?;
        let _ = out.x.sum_all()?.to_scalar::<f32>()?;
        Ok(())
    })?;
    report("fused score, block noise", timing);

    if std::env::args().any(|a| a == "--parts") {
        use sde_core::noise::NoiseSource;
        use sde_core::ScoreFn;
        let x = gmm.sample(
            &(batch, 2).into(),
            &Device::Cpu,
            DType::F32,
            &mut rand::rngs::StdRng::seed_from_u64(1),
        )?;
        let t = sde_core::time_tensor(0.5, batch, &Device::Cpu, DType::F32)?;
        report(
            "part: fused score only, 2N evaluations",
            time_it(1, |_| {
                for _ in 0..2 * steps {
                    fused.score(&x, &t)?;
                }
                Ok(())
            })?,
        );
        report(
            "part: block noise only, 2N draws",
            time_it(1, |seed| {
                let mut noise = toy::BlockNoise::new(seed);
                for _ in 0..2 * steps {
                    noise.randn(&(batch, 2).into(), &Device::Cpu, DType::F32)?;
                }
                Ok(())
            })?,
        );
        report(
            "part: sde-core discretize + langevin_alpha only, N calls each",
            time_it(1, |_| {
                use sde_core::Sde;
                for _ in 0..steps {
                    sde.discretize(&x, &t)?;
                    sde.langevin_alpha(&t)?;
                }
                Ok(())
            })?,
        );
        let cheap = |x: &candle_core::Tensor,
                     _t: &candle_core::Tensor|
         -> sde_core::Result<candle_core::Tensor> { Ok(x.affine(-0.01, 0.0)?) };
        report(
            "part: sampler with a 1-op score",
            time_it(1, |seed| {
                let mut noise = toy::BlockNoise::new(seed);
                sampler.sample(
                    &sde,
                    &cheap,
                    (batch, 2),
                    &Device::Cpu,
                    DType::F32,
                    &mut noise,
                )?;
                Ok(())
            })?,
        );
    }

    let timing = time_it(reps.min(1), |seed| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let out = sampler.sample(
            &sde,
            &core_score,
            (batch, 2),
            &Device::Cpu,
            DType::F32,
            &mut rng,
        )?;
        let _ = out.x.sum_all()?.to_scalar::<f32>()?;
        Ok(())
    })?;
    report("sde-core score, StdRng", timing);
    Ok(())
}
