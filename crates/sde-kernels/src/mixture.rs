//! The score of a Gaussian mixture, and its vector–Jacobian product, on float32 points of low
//! dimension: the kernel of `sde_core::analytic::FastMixtureScore`.
//!
//! For $p_t = \sum_k w_k\,\mathcal N(a\mu_k, \operatorname{diag}(v_k))$ with
//! $v_k = a^2 s_k^2 + \sigma^2$ (the data mixture under an SDE with kernel
//! $\mathcal N(a\,x_0, \sigma^2 I)$), the caller computes the per-time constants $a\mu_k$,
//! $1/v_k$ and $c_k = \log w_k - \tfrac12\sum_j \log(2\pi v_{kj})$ once per time
//! ([`MixtureConsts`]); the kernel then evaluates, per point,
//!
//! $s(x) = \sum_k r_k(x)\,(a\mu_k - x)/v_k$, $r_k = \operatorname{softmax}_k\big(c_k - \tfrac12
//! \sum_j (x_j - a\mu_{kj})^2 / v_{kj}\big)$,
//!
//! and with a probe $v$ the product $v^\top J = \sum_k r_k\big(-v/v_k + (s_k - s)((s_k - s)\cdot
//! v)\big)$ ($J$ is symmetric; the centred form does not cancel where one component dominates).
//!
//! Float32 arithmetic, $e^x$ by a polynomial (relative error below 5e-7, tested), and no fused
//! multiply–adds, so the AVX2 build and the portable build give bit-identical results. Points
//! go through structure-of-arrays blocks of [`BLOCK`] points (every inner loop runs over the
//! lanes of a SIMD register), the rest one at a time; every lane runs the same sequence of
//! operations, so a point's result does not depend on the block it falls in, nor on how a batch
//! is split over threads ([`score_runs`] lays its tasks out by size only).
//!
//! Accuracy against the f64 closed form (tested in `sde-core`): relative error below 1e-4 on
//! the score and 1e-3 on the vjp at points of $p_t$.

use std::ops::Range;

use crate::parallel::{for_each_mut, row_groups};

/// A vjp probe and the buffer for its product, when the vjp is wanted.
type Probe<'a> = Option<(&'a [f32], &'a mut [f32])>;

/// Points per block: two AVX2 registers of f32 per array.
pub const BLOCK: usize = 16;
const P: usize = BLOCK;

/// Dimensions with a compiled kernel (low-dimensional data: the 2-D toys and their kin).
pub const MAX_DIM: usize = 4;

/// The per-time constants of $p_t$ in float32, for $K$ components in $D \le$ [`MAX_DIM`]
/// dimensions: $a\mu_k$ (`[K·D]`), $1/v_k$ (`[K·D]`) and $c_k$ (`[K]`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MixtureConsts {
    k: usize,
    d: usize,
    amu: Vec<f32>,
    inv_v: Vec<f32>,
    log_norm: Vec<f32>,
}

impl MixtureConsts {
    /// Constants rounded to float32 from their f64 values ([`set`](Self::set)).
    pub fn from_f64(d: usize, amu: &[f64], inv_v: &[f64], log_norm: &[f64]) -> Self {
        let mut c = Self::default();
        c.set(d, amu, inv_v, log_norm);
        c
    }

    /// Replaces the constants by the float32 roundings of `amu` ($a\mu_k$, row-major `[K, D]`),
    /// `inv_v` ($1/v_k$, `[K, D]`) and `log_norm` ($c_k$, `[K]`), reusing the buffers.
    ///
    /// # Panics
    /// Unless `1 ≤ d ≤ MAX_DIM`, `K = log_norm.len() ≥ 1` and `amu`, `inv_v` have `K·d` values.
    pub fn set(&mut self, d: usize, amu: &[f64], inv_v: &[f64], log_norm: &[f64]) {
        let k = log_norm.len();
        assert!(
            (1..=MAX_DIM).contains(&d) && k >= 1 && amu.len() == k * d && inv_v.len() == k * d,
            "MixtureConsts: d = {d} (1..={MAX_DIM}), {k} components, {} means and {} inverse \
             variances (K·d each)",
            amu.len(),
            inv_v.len()
        );
        let narrow = |dst: &mut Vec<f32>, src: &[f64]| {
            dst.clear();
            dst.extend(src.iter().map(|&v| v as f32));
        };
        narrow(&mut self.amu, amu);
        narrow(&mut self.inv_v, inv_v);
        narrow(&mut self.log_norm, log_norm);
        (self.k, self.d) = (k, d);
    }

    /// $K$, the number of components.
    pub fn n_components(&self) -> usize {
        self.k
    }

    /// $D$, the dimension of a point.
    pub fn dim(&self) -> usize {
        self.d
    }
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
    c: &MixtureConsts,
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
    c: &MixtureConsts,
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

#[inline(always)]
fn points(x: &[f32], out: &mut [f32], v: Probe, c: &MixtureConsts, s: &mut Scratch) {
    match c.d {
        1 => points_d::<1>(x, out, v, c, s),
        2 => points_d::<2>(x, out, v, c, s),
        3 => points_d::<3>(x, out, v, c, s),
        4 => points_d::<4>(x, out, v, c, s),
        // `MixtureConsts::set` admits 1..=MAX_DIM only
        d => unreachable!("no float32 kernel for dimension {d}"),
    }
}

/// [`points`] compiled with AVX2 enabled.
///
/// # Safety
/// The CPU running it must support AVX2 (and the OS must save the AVX registers): that is the
/// only precondition, the one `#[target_feature]` adds. The body is safe, bounds-checked code.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn points_avx2(x: &[f32], out: &mut [f32], v: Probe, c: &MixtureConsts, s: &mut Scratch) {
    points(x, out, v, c, s)
}

/// The score (and vjp) of `x` at one time on the calling thread; sizes checked by the caller.
/// Runtime dispatch: the AVX2 build of the same loops where the CPU has it, the baseline build
/// otherwise (bit-identical results: no FMA contraction in either).
///
/// The thread-local scratch is taken here, outside the `avx2` function: the kernel is inlined
/// into whatever calls it, and a closure passed to `LocalKey::with` would be compiled for the
/// baseline target, not AVX2.
fn points_dispatch(x: &[f32], out: &mut [f32], v: Probe, c: &MixtureConsts) {
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

/// Checks the sizes of one call: `x`, `out` (and the probe and its product) hold whole points.
fn check_points(who: &str, d: usize, x: &[f32], out: &[f32], v: &Option<(&[f32], &mut [f32])>) {
    assert!(
        x.len() % d == 0 && out.len() == x.len(),
        "{who}: x has {} values, out {} (whole points of dimension {d}, the same length)",
        x.len(),
        out.len()
    );
    if let Some((pv, ov)) = v {
        assert!(
            pv.len() == x.len() && ov.len() == x.len(),
            "{who}: the probe has {} values and its product {}, x {}",
            pv.len(),
            ov.len(),
            x.len()
        );
    }
}

/// The score of the row-major points `x` (`[n, D]`) at the time of `c` into `out`, and with
/// `vjp = Some((probe, out_vjp))` the product $v^\top J$ into `out_vjp`, on the calling thread.
///
/// # Panics
/// If `x.len()` is not a multiple of $D$ or the other slices do not have its length.
pub fn score_points(
    c: &MixtureConsts,
    x: &[f32],
    out: &mut [f32],
    vjp: Option<(&[f32], &mut [f32])>,
) {
    check_points("mixture::score_points", c.d, x, out, &vjp);
    points_dispatch(x, out, vjp, c);
}

/// At most this many tasks per call (a constant: the layout depends on the batch size only).
const MAX_TASKS: usize = 64;

/// The score (and with `vjp`, the vjp) of `n` row-major points `x` of dimension `d` under a
/// mixture of `k` components, cut into
/// `runs` of consecutive points that share their time: `consts(r, c)` sets `c` to the constants
/// of run `r` (it is called once per run and task, so it must be a function of `r`). The points
/// are split into tasks of whole [`BLOCK`]s by `n` alone and run on [`crate::parallel`]'s pool
/// when the batch is large, so the result is the same on any number of threads and equals
/// [`score_points`] run by run.
///
/// # Panics
/// If `d` is not in `1..=MAX_DIM`, the slices do not hold `n` whole points, `runs` do not tile
/// `0..n` in order, or `consts` sets constants of another shape than `k × d`.
pub fn score_runs(
    k: usize,
    d: usize,
    x: &[f32],
    out: &mut [f32],
    vjp: Option<(&[f32], &mut [f32])>,
    runs: &[Range<usize>],
    consts: impl Fn(usize, &mut MixtureConsts) + Sync,
) {
    assert!((1..=MAX_DIM).contains(&d), "mixture::score_runs: d = {d}");
    check_points("mixture::score_runs", d, x, out, &vjp);
    let n = x.len() / d;
    let mut next = 0;
    for r in runs {
        assert!(
            r.start == next && r.end > r.start,
            "mixture::score_runs: run {r:?} does not follow point {next}"
        );
        next = r.end;
    }
    assert_eq!(
        next, n,
        "mixture::score_runs: the runs end at {next}, not at {n}"
    );
    let (probe, out_v) = match vjp {
        Some((pv, ov)) => (Some(pv), Some(ov)),
        None => (None, None),
    };
    struct Task<'a> {
        points: Range<usize>,
        out: &'a mut [f32],
        out_v: Option<&'a mut [f32]>,
    }
    let mut tasks = Vec::new();
    let (mut rest, mut rest_v) = (out, out_v);
    for points in row_groups(n, P, MAX_TASKS) {
        let len = points.len() * d;
        let (o, o_next) = std::mem::take(&mut rest).split_at_mut(len);
        let (ov, ov_next) = match rest_v.take() {
            Some(v) => {
                let (a, b) = v.split_at_mut(len);
                (Some(a), Some(b))
            }
            None => (None, None),
        };
        tasks.push(Task {
            points,
            out: o,
            out_v: ov,
        });
        (rest, rest_v) = (o_next, ov_next);
    }
    // Points × components × dimensions: the splitting threshold of the policy then matches the
    // measured one (a 10 000-point 2-D batch of 8 components ran slower on two threads).
    let work = n.saturating_mul(k).saturating_mul(d);
    for_each_mut(&mut tasks, work, |_, task| {
        let mut c = MixtureConsts::default();
        let first = runs.partition_point(|r| r.end <= task.points.start);
        for (ri, r) in runs.iter().enumerate().skip(first) {
            if r.start >= task.points.end {
                break;
            }
            consts(ri, &mut c);
            assert!(
                (c.k, c.d) == (k, d),
                "mixture::score_runs: constants of shape {} × {} for {k} × {d}",
                c.k,
                c.d
            );
            let (lo, hi) = (r.start.max(task.points.start), r.end.min(task.points.end));
            let local = (lo - task.points.start) * d..(hi - task.points.start) * d;
            let v = match (probe, task.out_v.as_deref_mut()) {
                (Some(pv), Some(ov)) => Some((&pv[lo * d..hi * d], &mut ov[local.clone()])),
                _ => None,
            };
            points_dispatch(&x[lo * d..hi * d], &mut task.out[local], v, &c);
        }
    });
}

#[cfg(test)]
#[path = "mixture_tests.rs"]
mod tests;
