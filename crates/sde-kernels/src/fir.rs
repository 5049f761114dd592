//! FIR up/down-sampling (`upfirdn2d` of StyleGAN2, with a separable kernel) of `[H, W]`
//! planes, and its adjoint (the input gradient).
//!
//! Along one axis, with $\tilde k$ the reversed taps and $p_0$ the leading pad,
//! $y_i = \sum_j \tilde k_j\, x_{(i d + j - p_0)/u}$ over the $j$ for which $i d + j - p_0$ is a
//! non-negative multiple of $u$ below $u \cdot \mathrm{len}$ (`up` $u$, `down` $d$): zero
//! insertion, padding (negative pads crop), a true convolution with the kernel, and keeping every
//! $d$-th sample. The 2-D map applies it along W, then along H; the adjoint scatters
//! $g_i \tilde k_j$ back to the same input samples, along H, then along W.
//!
//! One task per run of planes ([`crate::parallel::for_each_chunk_run`]); each plane is computed
//! the same way whatever the split.

use crate::float::Float;
use crate::parallel;

/// The parameters of one `upfirdn`: a 1-D kernel applied along both axes of a plane, the
/// upsampling and downsampling factors and the pads before and after (negative values crop).
#[derive(Debug, Clone, PartialEq)]
pub struct UpFirDn {
    /// Reversed taps.
    taps: Vec<f64>,
    up: usize,
    down: usize,
    pad0: isize,
    pad1: isize,
}

impl UpFirDn {
    /// `upfirdn` with the 1-D `kernel` (applied as a true convolution, flipped, as in
    /// `upfirdn2d`), factors `up`, `down` and pads `pad = (before, after)`; `None` unless
    /// `up, down >= 1` and the kernel has a tap.
    pub fn new(kernel: &[f64], up: usize, down: usize, pad: (isize, isize)) -> Option<Self> {
        (up > 0 && down > 0 && !kernel.is_empty()).then(|| Self {
            taps: kernel.iter().rev().copied().collect(),
            up,
            down,
            pad0: pad.0,
            pad1: pad.1,
        })
    }

    /// The output length along an axis of input length `len`; `None` when the padded,
    /// upsampled signal is shorter than the kernel.
    pub fn out_len(&self, len: usize) -> Option<usize> {
        let l = (len * self.up) as isize + self.pad0 + self.pad1;
        let taps = self.taps.len() as isize;
        (l >= taps).then(|| ((l - taps) as usize) / self.down + 1)
    }

    /// The output `(Ho, Wo)` of `(H, W)` planes. Panics where [`Self::out_len`] is `None`.
    pub fn out_hw(&self, (h, w): (usize, usize)) -> (usize, usize) {
        match (self.out_len(h), self.out_len(w)) {
            (Some(ho), Some(wo)) => (ho, wo),
            _ => panic!("upfirdn2d: {h}x{w} planes are shorter than the kernel after padding"),
        }
    }

    /// The map of `x: [planes, H, W]` (`hw = (H, W)`) → `[planes, Ho, Wo]`. Panics if `x` does
    /// not hold `planes · H · W` values or [`Self::out_hw`] panics.
    pub fn forward<T: Float>(&self, x: &[T], planes: usize, hw: (usize, usize)) -> Vec<T> {
        self.run(false, x, planes, hw)
    }

    /// The adjoint of [`Self::forward`] for input planes of size `hw = (H, W)`: the output
    /// gradient `gy: [planes, Ho, Wo]` → the input gradient `[planes, H, W]`. Panics if `gy` does
    /// not hold `planes · Ho · Wo` values or [`Self::out_hw`] panics.
    pub fn adjoint<T: Float>(&self, gy: &[T], planes: usize, hw: (usize, usize)) -> Vec<T> {
        self.run(true, gy, planes, hw)
    }

    fn run<T: Float>(&self, adjoint: bool, x: &[T], planes: usize, hw: (usize, usize)) -> Vec<T> {
        let out_hw = self.out_hw(hw);
        let (a, b) = if adjoint { (out_hw, hw) } else { (hw, out_hw) };
        let (n_in, n_out) = (a.0 * a.1, b.0 * b.1);
        assert_eq!(
            x.len(),
            planes * n_in,
            "upfirdn2d: {} values for {planes} planes of {a:?}",
            x.len()
        );
        let mut y = vec![T::zero(); planes * n_out];
        let work = 2 * planes * (hw.0 + out_hw.0) * out_hw.1 * self.taps.len();
        let rows = self.tap_table(out_hw.0, hw.0);
        let cols = self.tap_table(out_hw.1, hw.1);
        parallel::for_each_chunk_run(&mut y, n_out, work, |ps, run| {
            let mut tmp = Vec::new();
            for (p, yp) in ps.zip(run.chunks_mut(n_out)) {
                let xp = &x[p * n_in..(p + 1) * n_in];
                self.plane(adjoint, (&rows, &cols), (hw, out_hw), xp, yp, &mut tmp);
            }
        });
        y
    }

    /// For every output index along an axis of input length `len`, the `(source, tap)` pairs it
    /// sums, taps in order: [`Self::src`] evaluated once per call instead of per pixel.
    fn tap_table<T: Float>(&self, out_len: usize, len: usize) -> TapTable<T> {
        (0..out_len)
            .map(|i| {
                self.taps
                    .iter()
                    .enumerate()
                    .filter_map(|(j, &kj)| self.src(i, j, len).map(|s| (s, T::from_f64(kj))))
                    .collect()
            })
            .collect()
    }

    /// Index of the input sample that tap `j` of output `i` reads, if any.
    #[inline]
    fn src(&self, i: usize, j: usize, len: usize) -> Option<usize> {
        let t = (i * self.down + j) as isize - self.pad0;
        if t < 0 || t % self.up as isize != 0 {
            return None;
        }
        let s = (t / self.up as isize) as usize;
        (s < len).then_some(s)
    }

    fn plane<T: Float>(
        &self,
        adjoint: bool,
        (rows, cols): (&TapTable<T>, &TapTable<T>),
        (in_hw, out_hw): ((usize, usize), (usize, usize)),
        x: &[T],
        y: &mut [T],
        tmp: &mut Vec<T>,
    ) {
        let (h, w) = in_hw;
        let wo = out_hw.1;
        if !adjoint {
            // along W: tmp[h, wo]
            tmp.clear();
            tmp.resize(h * wo, T::zero());
            for r in 0..h {
                let (xr, tr) = (&x[r * w..(r + 1) * w], &mut tmp[r * wo..(r + 1) * wo]);
                for (tv, col) in tr.iter_mut().zip(cols) {
                    let mut acc = T::zero();
                    for &(s, kj) in col {
                        acc += kj * xr[s];
                    }
                    *tv = acc;
                }
            }
            // along H, a row at a time
            y.fill(T::zero());
            for (i, row) in rows.iter().enumerate() {
                let yr = &mut y[i * wo..(i + 1) * wo];
                for &(s, kj) in row {
                    for (a, &b) in yr.iter_mut().zip(&tmp[s * wo..(s + 1) * wo]) {
                        *a += kj * b;
                    }
                }
            }
        } else {
            // x is the output gradient [ho, wo], y the input gradient [h, w]
            tmp.clear();
            tmp.resize(h * wo, T::zero());
            for (i, row) in rows.iter().enumerate() {
                let gr = &x[i * wo..(i + 1) * wo];
                for &(s, kj) in row {
                    for (a, &b) in tmp[s * wo..(s + 1) * wo].iter_mut().zip(gr) {
                        *a += kj * b;
                    }
                }
            }
            y.fill(T::zero());
            for r in 0..h {
                let (tr, yr) = (&tmp[r * wo..(r + 1) * wo], &mut y[r * w..(r + 1) * w]);
                for (&gv, col) in tr.iter().zip(cols) {
                    for &(s, kj) in col {
                        yr[s] += kj * gv;
                    }
                }
            }
        }
    }
}

/// Per output index along an axis, the `(source index, tap)` pairs it sums.
type TapTable<T> = Vec<Vec<(usize, T)>>;

#[cfg(test)]
#[path = "fir_tests.rs"]
mod tests;
