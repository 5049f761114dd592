//! GroupNorm, optionally fused with the SiLU that follows it, forward and backward, over
//! contiguous `[B, C, S]` activations (`S` the spatial positions).
//!
//! For each sample $b$ and group $g$ of $C/G$ channels, with $\mu$ and $\sigma^2$ the mean and
//! biased variance over the group's channels and positions and $r = 1/\sqrt{\sigma^2+\epsilon}$:
//! $z = \gamma_c (x - \mu) r + \beta_c$, and $y = z$ or $y = z\,\sigma(z)$ (SiLU).
//!
//! One task per (sample, group) ([`crate::parallel`]'s policy, so the result does not depend on
//! the thread count). Each task's loops are compiled per instruction-set level
//! ([`crate::simd`]'s dispatch): statistics accumulate in f64 over eight interleaved partial
//! sums (a fixed order), SiLU uses the vector `exp` in f32. The forward reads the group twice
//! for its statistics and writes the output once; the backward reads input and output gradient
//! twice and writes the input gradient once.

use crate::parallel;
use crate::simd::{dispatch, level, sigmoid_scalar, Level};

/// What follows the normalisation inside the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GnActivation {
    /// $y = z$.
    Identity,
    /// $y = z\,\sigma(z)$.
    Silu,
}

/// The layout of the activation: `batch × channels × spatial`, `channels` split into `groups`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GnShape {
    /// $B$.
    pub batch: usize,
    /// $C$, a multiple of `groups`.
    pub channels: usize,
    /// $G$.
    pub groups: usize,
    /// $S$, the positions per channel.
    pub spatial: usize,
}

impl GnShape {
    fn check(&self, who: &str, x: usize, gamma: usize, beta: usize) {
        let GnShape {
            batch,
            channels,
            groups,
            spatial,
        } = *self;
        assert!(
            groups > 0 && channels % groups == 0,
            "{who}: {channels} channels in {groups} groups"
        );
        assert!(
            x == batch * channels * spatial && gamma == channels && beta == channels,
            "{who}: x has {x} elements for {self:?}; gamma {gamma}, beta {beta} (expected \
             {channels})"
        );
    }
}

/// The element types of the kernels: `f32` (vector `exp`) and `f64`.
pub trait GnFloat: private::Kernels {}
impl GnFloat for f32 {}
impl GnFloat for f64 {}

mod private {
    /// One (sample, group) task's parameters.
    pub struct Group<'a, T> {
        pub gamma: &'a [T],
        pub beta: &'a [T],
        pub spatial: usize,
        pub eps: f64,
        pub silu: bool,
    }

    /// The per-type kernels, on top of the crate's element type (its `from_f64` / `as_f64`).
    pub trait Kernels: crate::float::Float {
        fn sigmoid(self) -> Self;
        fn fwd_group(g: &Group<'_, Self>, xs: &[Self], ys: &mut [Self]);
        fn bwd_group(
            g: &Group<'_, Self>,
            xs: &[Self],
            dys: &[Self],
            dxs: &mut [Self],
            pg: &mut [Self],
        );
    }
}
use private::{Group, Kernels};

impl Kernels for f32 {
    #[inline(always)]
    fn sigmoid(self) -> Self {
        sigmoid_scalar(self)
    }
    fn fwd_group(g: &Group<'_, f32>, xs: &[f32], ys: &mut [f32]) {
        fwd_f32_dispatch(g, xs, ys)
    }
    fn bwd_group(g: &Group<'_, f32>, xs: &[f32], dys: &[f32], dxs: &mut [f32], pg: &mut [f32]) {
        bwd_f32_dispatch(g, xs, dys, dxs, pg)
    }
}

impl Kernels for f64 {
    #[inline(always)]
    fn sigmoid(self) -> Self {
        1.0 / (1.0 + (-self).exp())
    }
    fn fwd_group(g: &Group<'_, f64>, xs: &[f64], ys: &mut [f64]) {
        fwd_f64_dispatch(g, xs, ys)
    }
    fn bwd_group(g: &Group<'_, f64>, xs: &[f64], dys: &[f64], dxs: &mut [f64], pg: &mut [f64]) {
        bwd_f64_dispatch(g, xs, dys, dxs, pg)
    }
}

/// $\sum_i f(v_i)$ in f64 over eight interleaved partial sums, added in a fixed order.
#[inline(always)]
fn lane_sum<T: Kernels>(v: &[T], f: impl Fn(T) -> f64) -> f64 {
    let mut acc = [0f64; 8];
    let mut it = v.chunks_exact(8);
    for q in &mut it {
        for (a, &x) in acc.iter_mut().zip(q) {
            *a += f(x);
        }
    }
    for (a, &x) in acc.iter_mut().zip(it.remainder()) {
        *a += f(x);
    }
    acc.iter().sum()
}

/// $\sum_i a_i b_i$ as [`lane_sum`].
#[inline(always)]
fn lane_dot<T: Kernels>(a: &[T], b: &[T]) -> f64 {
    let mut acc = [0f64; 8];
    let (mut ia, mut ib) = (a.chunks_exact(8), b.chunks_exact(8));
    for (qa, qb) in (&mut ia).zip(&mut ib) {
        for ((s, &x), &y) in acc.iter_mut().zip(qa).zip(qb) {
            *s += x.as_f64() * y.as_f64();
        }
    }
    for ((s, &x), &y) in acc.iter_mut().zip(ia.remainder()).zip(ib.remainder()) {
        *s += x.as_f64() * y.as_f64();
    }
    acc.iter().sum()
}

/// Mean and $1/\sqrt{\sigma^2 + \epsilon}$ of `v` (two passes).
#[inline(always)]
fn stats<T: Kernels>(v: &[T], eps: f64) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = lane_sum(v, |a| a.as_f64()) / n;
    let var = lane_sum(v, |a| {
        let d = a.as_f64() - mean;
        d * d
    }) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

#[inline(always)]
fn fwd_body<T: Kernels>(g: &Group<'_, T>, xs: &[T], ys: &mut [T]) {
    let (mean, rstd) = stats(xs, g.eps);
    let s = g.spatial;
    for (j, (xc, yc)) in xs.chunks_exact(s).zip(ys.chunks_exact_mut(s)).enumerate() {
        let a = g.gamma[j].as_f64() * rstd;
        let (a, o) = (T::from_f64(a), T::from_f64(g.beta[j].as_f64() - mean * a));
        if g.silu {
            for (y, &x) in yc.iter_mut().zip(xc) {
                let z = x * a + o;
                *y = z * z.sigmoid();
            }
        } else {
            for (y, &x) in yc.iter_mut().zip(xc) {
                *y = x * a + o;
            }
        }
    }
}

/// With $\hat x = (x - \mu) r$, $dz = dy$ (or $dy\,\sigma(z)(1 + z(1 - \sigma(z)))$ after SiLU),
/// $d\hat x = \gamma\,dz$: $dx = r\,(d\hat x - \overline{d\hat x} - \hat x\,
/// \overline{d\hat x\,\hat x})$ (group means); `pg` gets $d\gamma_c = \sum dz\,\hat x$ then
/// $d\beta_c = \sum dz$ for the group's channels.
#[inline(always)]
fn bwd_body<T: Kernels>(g: &Group<'_, T>, xs: &[T], dys: &[T], dxs: &mut [T], pg: &mut [T]) {
    let (mean, rstd) = stats(xs, g.eps);
    let (s, cg) = (g.spatial, g.gamma.len());
    let one = T::from_f64(1.0);
    let (mut s1, mut s2) = (0f64, 0f64);
    for j in 0..cg {
        let gm = g.gamma[j].as_f64();
        let r = j * s..(j + 1) * s;
        let (xc, dyc, dzc) = (&xs[r.clone()], &dys[r.clone()], &mut dxs[r]);
        if g.silu {
            let a = gm * rstd;
            let (a, o) = (T::from_f64(a), T::from_f64(g.beta[j].as_f64() - mean * a));
            for ((d, &x), &dy) in dzc.iter_mut().zip(xc).zip(dyc) {
                let z = x * a + o;
                let sg = z.sigmoid();
                *d = dy * sg * (one + z * (one - sg));
            }
        } else {
            dzc.copy_from_slice(dyc);
        }
        let sdz = lane_sum(dzc, |d| d.as_f64());
        // Σ dz x̂ = r (Σ dz x − μ Σ dz): exact products in f64
        let sdzx = rstd * (lane_dot(dzc, xc) - mean * sdz);
        s1 += gm * sdz;
        s2 += gm * sdzx;
        pg[j] = T::from_f64(sdzx);
        pg[cg + j] = T::from_f64(sdz);
    }
    let n = (cg * s) as f64;
    let (m1, m2) = (s1 / n, s2 / n);
    for j in 0..cg {
        let gm = g.gamma[j].as_f64();
        let r = j * s..(j + 1) * s;
        // dx = r (γ dz − m1 − x̂ m2) = ka dz − kb x + kc
        let (ka, kb, kc) = (
            T::from_f64(rstd * gm),
            T::from_f64(rstd * rstd * m2),
            T::from_f64(rstd * (mean * rstd * m2 - m1)),
        );
        for (d, &x) in dxs[r.clone()].iter_mut().zip(&xs[r]) {
            *d = ka * *d - kb * x + kc;
        }
    }
}

#[inline(always)]
fn fwd_f32(g: &Group<'_, f32>, xs: &[f32], ys: &mut [f32]) {
    fwd_body(g, xs, ys)
}
#[inline(always)]
fn fwd_f64(g: &Group<'_, f64>, xs: &[f64], ys: &mut [f64]) {
    fwd_body(g, xs, ys)
}
#[inline(always)]
fn bwd_f32(g: &Group<'_, f32>, xs: &[f32], dys: &[f32], dxs: &mut [f32], pg: &mut [f32]) {
    bwd_body(g, xs, dys, dxs, pg)
}
#[inline(always)]
fn bwd_f64(g: &Group<'_, f64>, xs: &[f64], dys: &[f64], dxs: &mut [f64], pg: &mut [f64]) {
    bwd_body(g, xs, dys, dxs, pg)
}

dispatch!(fwd_f32_dispatch, (g: &Group<'_, f32>, xs: &[f32], ys: &mut [f32]), fwd_f32);
dispatch!(fwd_f64_dispatch, (g: &Group<'_, f64>, xs: &[f64], ys: &mut [f64]), fwd_f64);
dispatch!(bwd_f32_dispatch, (g: &Group<'_, f32>, xs: &[f32], dys: &[f32], dxs: &mut [f32], pg: &mut [f32]), bwd_f32);
dispatch!(bwd_f64_dispatch, (g: &Group<'_, f64>, xs: &[f64], dys: &[f64], dxs: &mut [f64], pg: &mut [f64]), bwd_f64);

fn group<'a, T>(
    shape: &GnShape,
    gamma: &'a [T],
    beta: &'a [T],
    g: usize,
    eps: f64,
    act: GnActivation,
) -> Group<'a, T> {
    let cg = shape.channels / shape.groups;
    Group {
        gamma: &gamma[g * cg..(g + 1) * cg],
        beta: &beta[g * cg..(g + 1) * cg],
        spatial: shape.spatial,
        eps,
        silu: act == GnActivation::Silu,
    }
}

/// `act(GroupNorm(x))` of `x` `[B, C, S]` with `gamma`, `beta` `[C]`. Panics if the lengths do
/// not match `shape` or `C` is not a multiple of `G`.
pub fn group_norm_forward<T: GnFloat>(
    x: &[T],
    gamma: &[T],
    beta: &[T],
    shape: GnShape,
    eps: f64,
    act: GnActivation,
) -> Vec<T> {
    shape.check("group_norm_forward", x.len(), gamma.len(), beta.len());
    let mut y = vec![T::default(); x.len()];
    if x.is_empty() {
        return y;
    }
    let n = x.len() / (shape.batch * shape.groups);
    let mut tasks: Vec<&mut [T]> = y.chunks_mut(n).collect();
    parallel::for_each_mut(&mut tasks, 12 * x.len(), |bg, ys| {
        let grp = group(&shape, gamma, beta, bg % shape.groups, eps, act);
        T::fwd_group(&grp, &x[bg * n..(bg + 1) * n], ys);
    });
    y
}

/// The backward of [`group_norm_forward`] for the output gradient `dy` `[B, C, S]`: the input
/// gradient, followed (when `param_grads`) by the parameter gradients $d\gamma$ then $d\beta$
/// (`[2, C]`, summed over the samples in sample order). Panics as
/// [`group_norm_forward`], or if `dy` and `x` differ in length.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_backward<T: GnFloat>(
    x: &[T],
    gamma: &[T],
    beta: &[T],
    dy: &[T],
    shape: GnShape,
    eps: f64,
    act: GnActivation,
    param_grads: bool,
) -> Vec<T> {
    shape.check("group_norm_backward", x.len(), gamma.len(), beta.len());
    assert_eq!(
        dy.len(),
        x.len(),
        "group_norm_backward: dy and x lengths differ"
    );
    let (b, c) = (shape.batch, shape.channels);
    let extra = if param_grads { 2 * c } else { 0 };
    let mut out = vec![T::default(); x.len() + extra];
    if x.is_empty() {
        return out;
    }
    let cg = c / shape.groups;
    let n = x.len() / (b * shape.groups);
    let (dx, pgs) = out.split_at_mut(x.len());
    let mut tasks: Vec<(&mut [T], Vec<T>)> = dx
        .chunks_mut(n)
        .map(|d| (d, vec![T::default(); 2 * cg]))
        .collect();
    parallel::for_each_mut(&mut tasks, 20 * x.len(), |bg, (dxs, pg)| {
        let grp = group(&shape, gamma, beta, bg % shape.groups, eps, act);
        let r = bg * n..(bg + 1) * n;
        T::bwd_group(&grp, &x[r.clone()], &dy[r], dxs, pg);
    });
    if param_grads {
        for (bg, (_, pg)) in tasks.iter().enumerate() {
            // tasks run sample by sample, so each slot sums its samples in order
            let base = (bg % shape.groups) * cg;
            for j in 0..cg {
                pgs[base + j] = pgs[base + j] + pg[j];
                pgs[c + base + j] = pgs[c + base + j] + pg[cg + j];
            }
        }
    }
    out
}

#[cfg(test)]
#[path = "groupnorm_tests.rs"]
mod tests;
