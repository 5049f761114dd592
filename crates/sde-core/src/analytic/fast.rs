//! The mixture score (and its vjp) on float32 CPU batches whose samples share their time (every
//! sampler step, every batch-controlled ODE step):
//! the per-time constants once per time, then one pass over the points in structure-of-arrays
//! blocks of [`P`] points, so that every inner loop runs over the lanes of a SIMD register.
//!
//! s(x) = Σ_k r_k(x) (a μ_k − x) / v_k with r_k = softmax_k(c_k − ½ Σ_j (x_j − a μ_kj)² / v_kj),
//! c_k = log w_k − ½ Σ_j log(2π v_kj). Float32 arithmetic (the precision of the input, as the
//! reference computes it in torch), e^x by a polynomial (relative error below 5e-7), and no fused
//! multiply–adds, so the AVX2 build and the portable build give bit-identical results. The
//! points are independent, so splitting a batch over threads does not change a bit either.

/// A vjp probe and the buffer for its product, when the vjp is wanted.
type Probe<'a> = Option<(&'a [f32], &'a mut [f32])>;

/// Points per block: two AVX2 registers of f32 per array.
const P: usize = 16;

/// The per-time constants of p_t in float32: a μ_k (`[K·D]`), 1/v_k (`[K·D]`) and c_k (`[K]`).
#[derive(Debug, Clone)]
pub(super) struct Consts32 {
    pub k: usize,
    pub d: usize,
    pub amu: Vec<f32>,
    pub inv_v: Vec<f32>,
    pub log_norm: Vec<f32>,
}

/// e^x for x ≤ 0: x = n ln 2 + r with |r| ≤ ½ ln 2, e^r by its degree-7 Taylor polynomial,
/// 2^n through the exponent bits. Arguments below −87 give e^−87 (≈ 1.6e−38) instead of a
/// subnormal: the responsibilities divide by a sum that is at least 1, so nothing changes.
#[inline(always)]
fn exp_neg(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // round(x / ln 2) with the 1.5·2^23 trick: the sum's low mantissa bits hold n itself, so
    // 2^n is built with integer adds and shifts (a float-to-int cast does not vectorize well).
    const MAGIC: f32 = 12_582_912.0;
    let x = if x < -87.0 { -87.0 } else { x };
    let shifted = x * std::f32::consts::LOG2_E + MAGIC;
    let n = shifted - MAGIC;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // bits(MAGIC + n) = 0x4B40_0000 + n, so the exponent field of 2^n is that − 0x4B40_0000 + 127
    let bits = shifted
        .to_bits()
        .wrapping_sub(0x4B40_0000)
        .wrapping_add(127)
        << 23;
    p * f32::from_bits(bits)
}

/// Loads `L` row-major points of dimension `D` into structure-of-arrays form.
#[inline(always)]
fn load<const L: usize, const D: usize>(src: &[f32]) -> [[f32; L]; D] {
    let mut dst = [[0.0f32; L]; D];
    for (j, row) in dst.iter_mut().enumerate() {
        for p in 0..L {
            row[p] = src[p * D + j];
        }
    }
    dst
}

/// Stores structure-of-arrays values back as `L` row-major points of dimension `D`.
#[inline(always)]
fn store<const L: usize, const D: usize>(src: &[[f32; L]; D], dst: &mut [f32]) {
    for (j, row) in src.iter().enumerate() {
        for p in 0..L {
            dst[p * D + j] = row[p];
        }
    }
}

/// The score of one block of `L` points of dimension `D` (`x`, `out` of length `L·D`,
/// row-major points) and, with `v = Some((probe, out_vjp))`, the vector–Jacobian product
/// vᵀJ = Σ_k r_k (−v/v_k + s_k (s_k·v)) − s̄ (s̄·v) (J is symmetric), computed in the centred
/// form Σ_k r_k (−v/v_k + (s_k − s̄)((s_k − s̄)·v)), which does not cancel where one component
/// dominates. `l` (K log-weights, then unnormalised responsibilities) and `dkv` (the K products
/// r_k (s_k − s̄)·v) are scratch.
#[inline(always)]
fn block<const L: usize, const D: usize>(
    x: &[f32],
    out: &mut [f32],
    v: Option<(&[f32], &mut [f32])>,
    c: &Consts32,
    l: &mut [[f32; L]],
    dkv: &mut [[f32; L]],
) {
    // Plain index loops over the components: iterator adapters (`step_by`, zipped chunks) were
    // left as out-of-line calls inside the AVX2 build.
    let k = c.k;
    let (amu, inv_v, log_norm) = (&c.amu[..k * D], &c.inv_v[..k * D], &c.log_norm[..k]);
    let (l, dkv) = (&mut l[..k], &mut dkv[..k]);
    let xs = load::<L, D>(x);
    let mut best = [f32::NEG_INFINITY; L];
    for kk in 0..k {
        let mut q = [0.0f32; L];
        for j in 0..D {
            let (m, w) = (amu[kk * D + j], inv_v[kk * D + j]);
            for p in 0..L {
                let e = xs[j][p] - m;
                q[p] += e * e * w;
            }
        }
        let (lk, ck) = (&mut l[kk], log_norm[kk]);
        for p in 0..L {
            lk[p] = ck - 0.5 * q[p];
            // a plain comparison (one vmaxps); NaN inputs still reach the output through x
            best[p] = if lk[p] > best[p] { lk[p] } else { best[p] };
        }
    }
    for lk in l.iter_mut() {
        for p in 0..L {
            lk[p] -= best[p];
        }
    }
    // One flat loop over all K·L exponentials: independent polynomial chains to interleave.
    for e in l.as_flattened_mut() {
        *e = exp_neg(*e);
    }
    let mut z = [0.0f32; L];
    for lk in l.iter() {
        for p in 0..L {
            z[p] += lk[p];
        }
    }
    let mut inv_z = [0.0f32; L];
    for p in 0..L {
        inv_z[p] = 1.0 / z[p];
    }
    // One output row at a time, accumulated over the components in a one-dimensional array
    // (LLVM keeps that in registers; a [D][L] accumulator gets scalarised).
    let mut acc = [[0.0f32; L]; D];
    for j in 0..D {
        let xj = &xs[j];
        let mut a = [0.0f32; L];
        for kk in 0..k {
            let (m, w, lk) = (amu[kk * D + j], inv_v[kk * D + j], &l[kk]);
            for p in 0..L {
                a[p] += lk[p] * w * (m - xj[p]);
            }
        }
        for p in 0..L {
            acc[j][p] = a[p] * inv_z[p];
        }
    }
    store::<L, D>(&acc, out);
    let Some((v, out_v)) = v else {
        return;
    };
    let vs = load::<L, D>(v);
    // r_k ((s_k − s̄) · v) per component, then the rows of the product
    for kk in 0..k {
        let mut d = [0.0f32; L];
        for j in 0..D {
            let (m, w) = (amu[kk * D + j], inv_v[kk * D + j]);
            for p in 0..L {
                d[p] += ((m - xs[j][p]) * w - acc[j][p]) * vs[j][p];
            }
        }
        let (lk, dk) = (&l[kk], &mut dkv[kk]);
        for p in 0..L {
            dk[p] = lk[p] * inv_z[p] * d[p];
        }
    }
    let mut jv = [[0.0f32; L]; D];
    for j in 0..D {
        let (xj, sj, vj) = (&xs[j], &acc[j], &vs[j]);
        let mut a = [0.0f32; L];
        for kk in 0..k {
            let (m, w, lk, dk) = (amu[kk * D + j], inv_v[kk * D + j], &l[kk], &dkv[kk]);
            for p in 0..L {
                a[p] += ((m - xj[p]) * w - sj[p]) * dk[p] - lk[p] * inv_z[p] * vj[p] * w;
            }
        }
        jv[j] = a;
    }
    store::<L, D>(&jv, out_v);
}

/// Per-thread scratch of the blocks (K rows of [`P`] and of 1 lanes, twice), reused across calls
/// so that many short runs (per-sample times) allocate nothing.
#[derive(Default)]
struct Scratch {
    wide: Vec<[f32; P]>,
    wide_d: Vec<[f32; P]>,
    one: Vec<[f32; 1]>,
    one_d: Vec<[f32; 1]>,
}

impl Scratch {
    fn resize(&mut self, k: usize) {
        self.wide.resize(k, [0.0; P]);
        self.wide_d.resize(k, [0.0; P]);
        self.one.resize(k, [0.0; 1]);
        self.one_d.resize(k, [0.0; 1]);
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// The score (and with `v`, the vjp) of every point of `x` (row-major `[n, D]`): blocks of
/// [`P`] points, then the remaining points one at a time. Every lane runs the same sequence of
/// float32 operations, so a point's result does not depend on the block it falls in (nor on
/// the batch around it).
#[inline(always)]
fn points_d<const D: usize>(
    x: &[f32],
    out: &mut [f32],
    v: Option<(&[f32], &mut [f32])>,
    c: &Consts32,
    s: &mut Scratch,
) {
    let Scratch {
        wide,
        wide_d,
        one,
        one_d,
    } = s;
    let (probe, mut out_v) = match v {
        Some((pv, ov)) => (Some(pv), Some(ov)),
        None => (None, None),
    };
    let n_points = x.len() / D;
    let mut i = 0;
    while i < n_points {
        let len = if n_points - i >= P { P } else { 1 };
        let r = i * D..(i + len) * D;
        let vv = match (probe, &mut out_v) {
            (Some(pv), Some(ov)) => Some((&pv[r.clone()], &mut ov[r.clone()])),
            _ => None,
        };
        if len == P {
            block::<P, D>(&x[r.clone()], &mut out[r], vv, c, wide, wide_d);
        } else {
            block::<1, D>(&x[r.clone()], &mut out[r], vv, c, one, one_d);
        }
        i += len;
    }
}

/// Dimensions with a compiled kernel (low-dimensional data; others use the f64 loop).
pub(super) const MAX_DIM: usize = 4;

#[inline(always)]
fn points(x: &[f32], out: &mut [f32], v: Probe, c: &Consts32, s: &mut Scratch) {
    match c.d {
        1 => points_d::<1>(x, out, v, c, s),
        2 => points_d::<2>(x, out, v, c, s),
        3 => points_d::<3>(x, out, v, c, s),
        4 => points_d::<4>(x, out, v, c, s),
        d => unreachable!("no float32 kernel for dimension {d} (callers check MAX_DIM)"),
    }
}

/// [`points`] compiled with AVX2 enabled.
///
/// # Safety
/// The CPU running it must support AVX2 (and the OS must save the AVX registers): that is the
/// only precondition, the one `#[target_feature]` adds. The body is safe, bounds-checked code.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn points_avx2(x: &[f32], out: &mut [f32], v: Probe, c: &Consts32, s: &mut Scratch) {
    points(x, out, v, c, s)
}

/// The score (and vjp) of `x` at one time on the calling thread. Runtime dispatch: the AVX2
/// build of the same loops where the CPU has it, the baseline build otherwise (bit-identical
/// results: no FMA contraction in either).
///
/// The thread-local scratch is taken here, outside the `avx2` function: the kernel is inlined
/// into whatever calls it, and a closure passed to `LocalKey::with` would be compiled for the
/// baseline target, not AVX2.
pub(super) fn points_dispatch(x: &[f32], out: &mut [f32], v: Probe, c: &Consts32) {
    SCRATCH.with(|cell| {
        let mut guard = cell.borrow_mut();
        let s = &mut *guard;
        s.resize(c.k);
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: `points_avx2`'s one precondition is AVX2 support on the running CPU,
                // which `is_x86_feature_detected!` has just confirmed (it also checks that the
                // OS enables the AVX state). The arguments are ordinary safe references.
                unsafe { points_avx2(x, out, v, c, s) };
                return;
            }
        }
        points(x, out, v, c, s)
    })
}

/// Work (points × components × dimensions) a thread must get before a batch is split: about a
/// quarter of a millisecond. Handing chunks to the pool costs wake-ups and cache moves, and a
/// sampler makes two score calls per step; on a 2-vCPU machine a 10 000-point 2-D batch
/// (160 000 units) ran slower on two threads than on one (`docs/performance-solvers.md`).
const MIN_WORK_PER_THREAD: usize = 1 << 18;

/// The score of the points `x` (`[n, D]`, row-major) at one time into `out`, and with
/// `v = Some((probe, out_vjp))` the vjp, in up to `pool_threads` chunks (at most 8) on
/// rayon's pool (spawning threads per call costs more than the work here).
pub(super) fn score_run(x: &[f32], out: &mut [f32], v: Option<(&[f32], &mut [f32])>, c: &Consts32) {
    let n = x.len() / c.d.max(1);
    let work = n * c.k * c.d;
    let threads = if work >= 2 * MIN_WORK_PER_THREAD {
        crate::tensor::pool_threads().min(work / MIN_WORK_PER_THREAD)
    } else {
        1
    };
    if threads <= 1 {
        points_dispatch(x, out, v, c);
        return;
    }
    // Chunks of whole blocks, one per thread.
    let per = n.div_ceil(threads).div_ceil(P) * P * c.d;
    let mut parts: Vec<(&[f32], &mut [f32], Probe)> = Vec::new();
    match v {
        Some((pv, ov)) => {
            for (((xc, oc), pc), vc) in x
                .chunks(per)
                .zip(out.chunks_mut(per))
                .zip(pv.chunks(per))
                .zip(ov.chunks_mut(per))
            {
                parts.push((xc, oc, Some((pc, vc))));
            }
        }
        None => {
            for (xc, oc) in x.chunks(per).zip(out.chunks_mut(per)) {
                parts.push((xc, oc, None));
            }
        }
    }
    use rayon::prelude::*;
    parts
        .into_par_iter()
        .for_each(|(xc, oc, vc)| points_dispatch(xc, oc, vc, c));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_neg_is_accurate_on_its_range() {
        let mut worst = 0.0f64;
        let mut x = 0.0f32;
        while x > -87.0 {
            let e = (x as f64).exp();
            worst = worst.max(((exp_neg(x) as f64) - e).abs() / e);
            x -= 0.001_3;
        }
        assert!(worst < 5e-7, "relative error {worst}");
        assert_eq!(exp_neg(0.0), 1.0);
        assert!(exp_neg(-1e4) > 0.0 && exp_neg(-1e4) < 1e-37);
    }

    #[test]
    fn dispatch_and_portable_build_agree_bit_for_bit() {
        let c = Consts32 {
            k: 3,
            d: 2,
            amu: vec![1.0, -1.0, -2.0, 0.5, 0.0, 3.0],
            inv_v: vec![2.0, 0.7, 0.3, 0.3, 1.1, 9.0],
            log_norm: vec![-0.2, -1.5, 0.3],
        };
        let x: Vec<f32> = (0..2 * 37)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.37)
            .collect();
        let (mut a, mut b) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        let mut s = Scratch::default();
        s.resize(c.k);
        points(&x, &mut a, None, &c, &mut s);
        points_dispatch(&x, &mut b, None, &c);
        assert_eq!(a, b);
        let v: Vec<f32> = (0..x.len()).map(|i| (i % 5) as f32 - 2.0).collect();
        let (mut ja, mut jb) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        points(&x, &mut a, Some((&v, &mut ja)), &c, &mut s);
        points_dispatch(&x, &mut b, Some((&v, &mut jb)), &c);
        assert_eq!((a, ja), (b, jb));
    }
}
