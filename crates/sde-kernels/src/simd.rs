//! Vector math over `f32` slices: `exp`, SiLU and the SiLU backward, the Adam and EMA updates
//! and a sum of squares, with run-time dispatch.
//!
//! The loops are written once, in portable Rust that LLVM vectorises, and compiled three times:
//! for AVX-512F, for AVX2+FMA, and for the build's baseline target. The widest level the CPU
//! supports is detected once per process (`is_x86_feature_detected!`), so one binary is fast on
//! AVX-512 machines and correct on AVX2-only ones.
//!
//! `exp` uses the classic reduction $e^x = 2^n e^r$, $n = \operatorname{round}(x \log_2 e)$,
//! $r = x - n \ln 2$ (with $\ln 2$ split in two for exactness) and a degree-6 Taylor polynomial
//! on $|r| \le \ln 2 / 2$: relative error below $3 \cdot 10^{-7}$ (about 2 ulp) for
//! $x \in [-87, 88]$; inputs are clamped to $[-87.3, 88.3]$, so very negative inputs give
//! $\approx 1.2\cdot 10^{-38}$ instead of 0 and large ones $\approx 2\cdot 10^{38}$ instead of
//! infinity. NaN stays NaN.

use std::sync::OnceLock;

/// The instruction-set level the vector loops were compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// AVX-512F (16 lanes of f32).
    Avx512,
    /// AVX2 with FMA (8 lanes).
    Avx2,
    /// The build's baseline target.
    Portable,
}

/// The widest level this CPU supports (detected once).
pub fn level() -> Level {
    static L: OnceLock<Level> = OnceLock::new();
    *L.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Level::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Level::Avx2;
            }
        }
        Level::Portable
    })
}

/// $e^x$ for $x$ not NaN (NaN gives a finite value; [`exp_scalar`] restores it).
#[inline(always)]
fn exp_core(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // round to nearest by the 1.5·2^23 trick (vectorises without a rounding instruction)
    const SHIFT: f32 = 12_582_912.0;
    // `max`/`min` (not `clamp`) so that the loop vectorises.
    let xc = x.max(-87.3).min(88.3);
    // `mul_add` is one FMA instruction at the AVX2 and AVX-512 levels (and a correctly rounded
    // software FMA at the baseline, so every level gives the same bits).
    let t = xc.mul_add(LOG2E, SHIFT);
    let n = t - SHIFT;
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, xc));
    let mut p = 1.0f32 / 720.0;
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = p.mul_add(r, c);
    }
    // 2^n from the exponent bits: the low mantissa bits of `t` hold n (|n| ≤ 127 < 2^22), so
    // integer arithmetic on the bits (no float-to-int conversion, which does not vectorise)
    // gives the biased exponent n + 127 ∈ [1, 254] after the clamp.
    let biased = t.to_bits().wrapping_sub(SHIFT.to_bits()).wrapping_add(127);
    p * f32::from_bits(biased << 23)
}

#[inline(always)]
fn exp_scalar(x: f32) -> f32 {
    let y = exp_core(x);
    if x.is_nan() {
        x
    } else {
        y
    }
}

/// The logistic sigmoid $1/(1+e^{-x})$ with the vector `exp`.
#[inline(always)]
pub(crate) fn sigmoid_scalar(x: f32) -> f32 {
    // a NaN x gives a number here; every caller multiplies by x, which keeps the NaN
    1.0 / (1.0 + exp_core(-x))
}

#[inline(always)]
fn exp_loop(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = exp_scalar(*v);
    }
}

#[inline(always)]
fn silu_loop(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v *= sigmoid_scalar(*v);
    }
}

#[inline(always)]
fn silu_to_loop(z: &[f32], h: &mut [f32]) {
    for (h, &z) in h.iter_mut().zip(z) {
        *h = z * sigmoid_scalar(z);
    }
}

#[inline(always)]
fn silu_backward_loop(z: &[f32], g: &mut [f32]) {
    // d/dz z σ(z) = σ(z) (1 + z (1 − σ(z)))
    for (g, &z) in g.iter_mut().zip(z) {
        let s = sigmoid_scalar(z);
        *g *= s * (1.0 + z * (1.0 - s));
    }
}

/// Compiles `$body` (a loop over slices) once per [`Level`] and calls the widest one this CPU
/// supports.
macro_rules! dispatch {
    ($name:ident, ($($arg:ident : $ty:ty),*), $body:ident) => {
        #[allow(clippy::too_many_arguments)]
        #[cfg(target_arch = "x86_64")]
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[target_feature(enable = "avx512f,fma")]
            pub(super) unsafe fn avx512($($arg: $ty),*) { super::$body($($arg),*) }
            #[target_feature(enable = "avx2,fma")]
            pub(super) unsafe fn avx2($($arg: $ty),*) { super::$body($($arg),*) }
        }
        #[allow(unreachable_code)]
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            match level() {
                // SAFETY: `level()` returned Avx512 only after `is_x86_feature_detected!`
                // found avx512f and fma on this CPU, the features the function is compiled for.
                Level::Avx512 => return unsafe { $name::avx512($($arg),*) },
                // SAFETY: as above, avx2 and fma were both detected.
                Level::Avx2 => return unsafe { $name::avx2($($arg),*) },
                Level::Portable => {}
            }
            $body($($arg),*)
        }
    };
}

pub(crate) use dispatch;

dispatch!(exp_dispatch, (x: &mut [f32]), exp_loop);
dispatch!(silu_dispatch, (x: &mut [f32]), silu_loop);
dispatch!(silu_to_dispatch, (z: &[f32], h: &mut [f32]), silu_to_loop);
dispatch!(silu_backward_dispatch, (z: &[f32], g: &mut [f32]), silu_backward_loop);

/// The constants of one Adam step (Kingma & Ba 2015, as `torch.optim.Adam` computes it), in
/// f32: see [`adam_update`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamStep {
    /// $\beta_1$.
    pub beta1: f32,
    /// $\beta_2$.
    pub beta2: f32,
    /// $1 - \beta_1$ (computed in f64 first: `1 - 0.999f32` is off by 5e-5 relative).
    pub one_minus_beta1: f32,
    /// $1 - \beta_2$.
    pub one_minus_beta2: f32,
    /// The clipping factor $c = \min(1, \text{max\_norm} / (\lVert g\rVert + 10^{-6}))$.
    pub clip: f32,
    /// L2 weight decay $\lambda$ (added to the gradient, as `torch.optim.Adam`).
    pub weight_decay: f32,
    /// $1 / \sqrt{1 - \beta_2^k}$.
    pub inv_bias_correction2: f32,
    /// $\epsilon$.
    pub eps: f32,
    /// $\eta_k / (1 - \beta_1^k)$.
    pub step_size: f32,
}

#[inline(always)]
fn adam_loop(p: &AdamStep, theta: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
    let one = |theta: &mut f32, m: &mut f32, v: &mut f32, gj: f32| {
        *m = *m * p.beta1 + gj * p.one_minus_beta1;
        *v = *v * p.beta2 + gj * gj * p.one_minus_beta2;
        let denom = v.sqrt() * p.inv_bias_correction2 + p.eps;
        *theta -= *m / denom * p.step_size;
    };
    let it = theta.iter_mut().zip(g).zip(m.iter_mut().zip(v.iter_mut()));
    // ×1 is exact, so the clip multiplies unconditionally; the decay term is added only when
    // set (adding θ·0 could flip the sign of a zero gradient).
    if p.weight_decay != 0.0 {
        for ((t, &gj), (m, v)) in it {
            let gj = gj * p.clip + *t * p.weight_decay;
            one(t, m, v, gj);
        }
    } else {
        for ((t, &gj), (m, v)) in it {
            one(t, m, v, gj * p.clip);
        }
    }
}

#[inline(always)]
fn ema_loop(shadow: &mut [f32], theta: &[f32], k: f32) {
    for (a, &b) in shadow.iter_mut().zip(theta) {
        *a -= k * (*a - b);
    }
}

#[inline(always)]
fn sum_sq_loop(g: &[f32], acc: &mut [f64; 8]) {
    let mut it = g.chunks_exact(8);
    for q in &mut it {
        for (a, &x) in acc.iter_mut().zip(q) {
            *a += (x as f64) * (x as f64);
        }
    }
    for (a, &x) in acc.iter_mut().zip(it.remainder()) {
        *a += (x as f64) * (x as f64);
    }
}

/// `sin p` and `cos p` for f32 `p` with $|p| \lesssim 10^4$: Cody–Waite reduction by
/// $\pi/2$ in three FMA steps, then Cephes' minimax polynomials on $[-\pi/4, \pi/4]$.
#[inline(always)]
fn sincos_loop(p: &[f32], sin: &mut [f32], cos: &mut [f32]) {
    const TWO_OVER_PI: f32 = std::f32::consts::FRAC_2_PI;
    const SHIFT: f32 = 12_582_912.0;
    // π/2 = C1 + C2 + C3 (each the f32 nearest the remainder)
    const C1: f32 = 1.570_796_4;
    const C2: f32 = -4.371_139e-8;
    const C3: f32 = -1.715_124_6e-15;
    for ((&x, s), c) in p.iter().zip(sin.iter_mut()).zip(cos.iter_mut()) {
        let t = x.mul_add(TWO_OVER_PI, SHIFT);
        let q = t - SHIFT;
        let r = q.mul_add(-C3, q.mul_add(-C2, q.mul_add(-C1, x)));
        let z = r * r;
        let sr = ((-1.951_529_6e-4f32)
            .mul_add(z, 8.332_161e-3)
            .mul_add(z, -1.666_665_5e-1)
            * z)
            .mul_add(r, r);
        let cr = (2.443_315_7e-5f32
            .mul_add(z, -1.388_731_6e-3)
            .mul_add(z, 4.166_664_6e-2)
            * z)
            .mul_add(z, (-0.5f32).mul_add(z, 1.0));
        // the quadrant q mod 4 from the low bits of t (two's complement, so negative q works)
        let k = t.to_bits().wrapping_sub(SHIFT.to_bits());
        let (sw_s, sw_c) = if k & 1 == 0 { (sr, cr) } else { (cr, sr) };
        let neg_s = if k & 2 == 0 { 0 } else { 0x8000_0000u32 };
        let neg_c = if k.wrapping_add(1) & 2 == 0 {
            0
        } else {
            0x8000_0000u32
        };
        *s = f32::from_bits(sw_s.to_bits() ^ neg_s);
        *c = f32::from_bits(sw_c.to_bits() ^ neg_c);
    }
}

dispatch!(sincos_dispatch, (p: &[f32], sin: &mut [f32], cos: &mut [f32]), sincos_loop);

/// `sin[i] = sin(p[i])`, `cos[i] = cos(p[i])`, vectorised: absolute error below $2\cdot10^{-7}$
/// for $|p| \le 10^4$ (the error of reducing a larger f32 argument grows with it; NaN and
/// infinities give NaN). Panics if the lengths differ.
pub fn sincos_to(p: &[f32], sin: &mut [f32], cos: &mut [f32]) {
    assert!(
        sin.len() == p.len() && cos.len() == p.len(),
        "sincos_to: lengths p {}, sin {}, cos {}",
        p.len(),
        sin.len(),
        cos.len()
    );
    sincos_dispatch(p, sin, cos)
}

dispatch!(adam_dispatch, (p: &AdamStep, theta: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]), adam_loop);
dispatch!(ema_dispatch, (shadow: &mut [f32], theta: &[f32], k: f32), ema_loop);
dispatch!(sum_sq_dispatch, (g: &[f32], acc: &mut [f64; 8]), sum_sq_loop);

/// One Adam update in place, element by element:
/// $g \leftarrow c\,g\ (+\ \lambda\theta)$, $m \leftarrow \beta_1 m + (1-\beta_1) g$,
/// $v \leftarrow \beta_2 v + (1-\beta_2) g^2$,
/// $\theta \leftarrow \theta - \frac{m}{\sqrt{v}/\sqrt{1-\beta_2^k} + \epsilon}\,
/// \frac{\eta_k}{1-\beta_1^k}$, vectorised. Panics if the lengths differ.
pub fn adam_update(p: &AdamStep, theta: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
    let n = theta.len();
    assert!(
        g.len() == n && m.len() == n && v.len() == n,
        "adam_update: lengths θ {n}, g {}, m {}, v {}",
        g.len(),
        m.len(),
        v.len()
    );
    adam_dispatch(p, theta, g, m, v)
}

/// The EMA update $\bar\theta \leftarrow \bar\theta - k(\bar\theta - \theta)$ with
/// $k = 1 - \text{decay}$, in place. Panics if the lengths differ.
pub fn ema_update(shadow: &mut [f32], theta: &[f32], k: f32) {
    assert_eq!(shadow.len(), theta.len(), "ema_update: lengths differ");
    ema_dispatch(shadow, theta, k)
}

/// $\sum_i g_i^2$ accumulated in f64 over eight interleaved partial sums (added to `acc`, which
/// callers sum at the end): a fixed order, so the same on every level.
pub fn sum_squares_f64(g: &[f32], acc: &mut [f64; 8]) {
    sum_sq_dispatch(g, acc)
}

/// $x_i \leftarrow e^{x_i}$ (see the module docs for the accuracy).
pub fn exp_inplace(x: &mut [f32]) {
    exp_dispatch(x)
}

/// SiLU in place: $x_i \leftarrow x_i / (1 + e^{-x_i})$.
pub fn silu_inplace(x: &mut [f32]) {
    silu_dispatch(x)
}

/// `h[i] = silu(z[i])`. Panics if the lengths differ.
pub fn silu_to(z: &[f32], h: &mut [f32]) {
    assert_eq!(z.len(), h.len(), "silu_to: z and h lengths differ");
    silu_to_dispatch(z, h)
}

/// The SiLU backward: `g[i] *= silu'(z[i])` $= \sigma(z)(1 + z(1 - \sigma(z)))$ with $z$ the
/// pre-activation. Panics if the lengths differ.
pub fn silu_backward(z: &[f32], g: &mut [f32]) {
    assert_eq!(z.len(), g.len(), "silu_backward: z and g lengths differ");
    silu_backward_dispatch(z, g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_3e_7_relative_of_f64() {
        let xs: Vec<f32> = (0..20_001)
            .map(|i| -87.0 + 175.0 * i as f32 / 20_000.0)
            .collect();
        let mut y = xs.clone();
        exp_inplace(&mut y);
        for (&x, &y) in xs.iter().zip(&y) {
            let e = (x as f64).exp();
            assert!(((y as f64 - e) / e).abs() < 3e-7, "exp({x}) = {y}, f64 {e}");
        }
    }

    #[test]
    fn exp_clamps_and_keeps_nan() {
        let mut y = vec![-1e4f32, 1e4, f32::NAN, f32::NEG_INFINITY];
        exp_inplace(&mut y);
        assert!(y[0] >= 0.0 && y[0] < 1e-37);
        assert!(y[1].is_finite() && y[1] > 2e38);
        assert!(y[2].is_nan());
        assert!(y[3] >= 0.0 && y[3] < 1e-37);
    }

    #[test]
    fn silu_and_its_backward_match_f64() {
        let z: Vec<f32> = (0..4001)
            .map(|i| -40.0 + 80.0 * i as f32 / 4000.0)
            .collect();
        let mut h = vec![0.0; z.len()];
        silu_to(&z, &mut h);
        let mut g = vec![1.0; z.len()];
        silu_backward(&z, &mut g);
        let mut h2 = z.clone();
        silu_inplace(&mut h2);
        for i in 0..z.len() {
            let zz = z[i] as f64;
            let s = 1.0 / (1.0 + (-zz).exp());
            let (hf, gf) = (zz * s, s * (1.0 + zz * (1.0 - s)));
            assert!(
                (h[i] as f64 - hf).abs() <= 1e-6 * (1.0 + hf.abs()),
                "silu({zz})"
            );
            assert_eq!(h[i], h2[i]);
            assert!(
                (g[i] as f64 - gf).abs() <= 1e-6 * (1.0 + gf.abs()),
                "silu'({zz})"
            );
        }
        let mut nan = vec![f32::NAN];
        silu_inplace(&mut nan);
        assert!(nan[0].is_nan());
    }

    #[test]
    fn every_compiled_level_gives_the_same_bits_as_portable() {
        let z: Vec<f32> = (0..1000).map(|i| -30.0 + 0.061 * i as f32).collect();
        let mut a = z.clone();
        silu_loop(&mut a);
        let mut b = z.clone();
        silu_inplace(&mut b);
        // LLVM never contracts a·b + c on its own and `mul_add` is exact at every level, so
        // the levels agree bit for bit.
        assert_eq!(a, b);
    }
}

#[cfg(test)]
mod optim_tests {
    use super::*;

    #[test]
    fn adam_and_ema_match_scalar_f64_formulas() {
        let n = 1003;
        let g: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01)
            .collect();
        for wd in [0.0f32, 0.01] {
            let p = AdamStep {
                beta1: 0.9,
                beta2: 0.999,
                one_minus_beta1: 0.1,
                one_minus_beta2: (1.0 - 0.999f64) as f32,
                clip: 0.5,
                weight_decay: wd,
                inv_bias_correction2: (1.0 / (1.0 - 0.999f64.powi(3)).sqrt()) as f32,
                eps: 1e-8,
                step_size: (2e-4 / (1.0 - 0.9f64.powi(3))) as f32,
            };
            let mut th: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let mut m: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos() * 0.01).collect();
            let mut v: Vec<f32> = (0..n)
                .map(|i| (i as f32 * 0.07).sin().abs() * 1e-4)
                .collect();
            let (th0, m0, v0) = (th.clone(), m.clone(), v.clone());
            adam_update(&p, &mut th, &g, &mut m, &mut v);
            for j in 0..n {
                let gj = g[j] as f64 * 0.5 + th0[j] as f64 * wd as f64;
                let mj = m0[j] as f64 * 0.9 + gj * 0.1;
                let vj = v0[j] as f64 * 0.999 + gj * gj * 0.001;
                let t = th0[j] as f64
                    - mj / (vj.sqrt() * p.inv_bias_correction2 as f64 + 1e-8) * p.step_size as f64;
                assert!((m[j] as f64 - mj).abs() < 1e-7 && (v[j] as f64 - vj).abs() < 1e-9);
                assert!((th[j] as f64 - t).abs() < 1e-6, "{j}: {} vs {t}", th[j]);
            }
        }
        let mut s = vec![1.0f32; 21];
        let t: Vec<f32> = (0..21).map(|i| i as f32).collect();
        ema_update(&mut s, &t, 0.25);
        for (j, &x) in s.iter().enumerate() {
            assert!((x - (1.0 - 0.25 * (1.0 - j as f32))).abs() < 1e-6);
        }
        let mut acc = [0.0; 8];
        sum_squares_f64(&t, &mut acc);
        assert_eq!(
            acc.iter().sum::<f64>(),
            (0..21).map(|i| (i * i) as f64).sum::<f64>()
        );
    }
}

#[cfg(test)]
mod trig_tests {
    use super::*;

    #[test]
    fn sincos_is_within_2e_7_of_f64_up_to_1e4() {
        let p: Vec<f32> = (0..200_001)
            .map(|i| -1e4 + 0.1 * i as f32 + 0.013 * (i % 7) as f32)
            .collect();
        let (mut s, mut c) = (vec![0.0; p.len()], vec![0.0; p.len()]);
        sincos_to(&p, &mut s, &mut c);
        let mut worst = 0.0f64;
        for i in 0..p.len() {
            let x = p[i] as f64;
            worst = worst
                .max((s[i] as f64 - x.sin()).abs())
                .max((c[i] as f64 - x.cos()).abs());
        }
        assert!(worst < 2e-7, "worst abs error {worst}");
        let (mut s, mut c) = (vec![0.0; 3], vec![0.0; 3]);
        sincos_to(&[f32::NAN, f32::INFINITY, 0.0], &mut s, &mut c);
        assert!(s[0].is_nan() && c[0].is_nan() && s[1].is_nan() && c[1].is_nan());
        assert_eq!((s[2], c[2]), (0.0, 1.0));
    }
}
