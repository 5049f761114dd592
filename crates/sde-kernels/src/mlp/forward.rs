//! The forward pass, by row blocks.

use super::{embed, fill_rows, labels_shared, Layout, MlpSpec, BLOCK_ROWS, MAX_GROUPS};
use crate::buffers;
use crate::matmul::{gemm, Accumulate, MatMut, MatRef};
use crate::parallel::{for_each_mut, row_groups};
use crate::simd::silu_to;

/// The time path of `rows` labels: $e$, $a_0 = T_0 e + t_0$, $g_0 = \mathrm{SiLU}(a_0)$,
/// $\tau$, $s = \mathrm{SiLU}(\tau)$ and $U_i s + c_i$ for every layer.
#[derive(Debug, Default)]
pub(crate) struct TimePath {
    pub rows: usize,
    pub emb: Vec<f32>,
    pub a0: Vec<f32>,
    pub g0: Vec<f32>,
    pub tau: Vec<f32>,
    pub st: Vec<f32>,
    /// `L × rows × H`.
    pub tt: Vec<f32>,
}

/// Makes `v` hold `n` values, swapping in a pooled buffer when it is too small (the values
/// are about to be overwritten).
pub(crate) fn ensure(v: &mut Vec<f32>, n: usize) {
    if v.capacity() < n {
        buffers::give(std::mem::replace(v, buffers::take(n)));
    }
    v.resize(n, 0.0);
}

impl Drop for TimePath {
    fn drop(&mut self) {
        for v in [
            &mut self.emb,
            &mut self.a0,
            &mut self.g0,
            &mut self.tau,
            &mut self.st,
            &mut self.tt,
        ] {
            buffers::give(std::mem::take(v));
        }
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        for v in [&mut self.h, &mut self.z, &mut self.out] {
            buffers::give(std::mem::take(v));
        }
    }
}

impl TimePath {
    pub(crate) fn compute(
        &mut self,
        spec: &MlpSpec,
        lay: &Layout,
        theta: &[f32],
        freqs: &[f32],
        labels: &[f32],
    ) {
        let (h, e, bt) = (spec.hidden, spec.embedding_dim, labels.len());
        self.rows = bt;
        ensure(&mut self.emb, bt * e);
        let mut p = Vec::with_capacity(e / 2);
        for (r, &l) in labels.iter().enumerate() {
            embed(spec, freqs, l, &mut self.emb[r * e..(r + 1) * e], &mut p);
        }
        ensure(&mut self.a0, bt * h);
        affine(&mut self.a0, &self.emb, theta, lay.t0w, lay.t0b, h, e);
        ensure(&mut self.g0, bt * h);
        silu_to(&self.a0, &mut self.g0);
        ensure(&mut self.tau, bt * h);
        affine(&mut self.tau, &self.g0, theta, lay.t1w, lay.t1b, h, h);
        ensure(&mut self.st, bt * h);
        silu_to(&self.tau, &mut self.st);
        ensure(&mut self.tt, spec.n_layers * bt * h);
        for (i, tt) in self.tt.chunks_exact_mut(bt * h).enumerate() {
            let u = lay.layer0 + i * lay.layer_len + h * h + h;
            affine(tt, &self.st, theta, u, u + h * h, h, h);
        }
    }
}

/// `dst[r, :] = W · src[r, :] + b` for the `[out, in]` weight at `theta[w..]` and the bias at
/// `theta[b..]`: `dst` is `rows × out`, `src` is `rows × in`.
pub(crate) fn affine(
    dst: &mut [f32],
    src: &[f32],
    theta: &[f32],
    w: usize,
    b: usize,
    out: usize,
    inp: usize,
) {
    let rows = src.len() / inp;
    fill_rows(dst, &theta[b..b + out]);
    gemm(
        MatMut::row_major(dst, rows, out),
        MatRef::row_major(src, rows, inp),
        MatRef::row_major(&theta[w..w + out * inp], out, inp).t(),
        Accumulate::Add,
    );
}

/// One block's activations: $h_0..h_L$ (`(L + 1) × nb × H`), the pre-activations $z_i$
/// (`L × nb × H`) and the unscaled output (`nb × D`).
#[derive(Debug, Default)]
pub(crate) struct Block {
    pub nb: usize,
    pub h: Vec<f32>,
    pub z: Vec<f32>,
    pub out: Vec<f32>,
}

impl Block {
    /// The forward pass of the rows `x` (`nb × D`) given their time path (1 shared row or
    /// `nb` rows).
    pub(crate) fn compute(
        &mut self,
        spec: &MlpSpec,
        lay: &Layout,
        theta: &[f32],
        x: &[f32],
        tp: &TimePath,
    ) {
        let (d, h, n) = (spec.data_dim, spec.hidden, spec.n_layers);
        let nb = x.len() / d;
        let m = nb * h;
        self.nb = nb;
        ensure(&mut self.h, (n + 1) * m);
        ensure(&mut self.z, n * m);
        ensure(&mut self.out, nb * d);
        affine(&mut self.h[..m], x, theta, lay.inw, lay.inb, h, d);
        for i in 0..n {
            let base = lay.layer0 + i * lay.layer_len;
            let z = &mut self.z[i * m..(i + 1) * m];
            // z = (b_i + U_i s + c_i) + W_i h_i, the time term per row or shared
            let tt = &tp.tt[i * tp.rows * h..(i + 1) * tp.rows * h];
            if tp.rows == 1 {
                fill_rows(z, tt);
            } else {
                z.copy_from_slice(tt);
            }
            let bias = &theta[base + h * h..base + h * h + h];
            for row in z.chunks_exact_mut(h) {
                for (a, &b) in row.iter_mut().zip(bias) {
                    *a += b;
                }
            }
            let (hin, hout) = self.h.split_at_mut((i + 1) * m);
            gemm(
                MatMut::row_major(z, nb, h),
                MatRef::row_major(&hin[i * m..], nb, h),
                MatRef::row_major(&theta[base..base + h * h], h, h).t(),
                Accumulate::Add,
            );
            silu_to(z, &mut hout[..m]);
        }
        affine(
            &mut self.out,
            &self.h[n * m..],
            theta,
            lay.outw,
            lay.outb,
            d,
            h,
        );
    }
}

/// Whether [`forward`] keeps its activations for a following [`super::backward`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Save {
    /// Keep nothing (inference; a backward pass then recomputes them).
    Nothing,
    /// Keep every block's activations (training: the backward pass reads them).
    Activations,
}

/// The activations [`forward`] kept: the shared time path (when every label was the same) and
/// each block's, in row order. Their memory returns to [`crate::buffers`] when dropped.
#[derive(Debug, Default)]
pub struct Activations {
    pub(crate) shared: Option<TimePath>,
    /// `(time path, block)` per block of [`BLOCK_ROWS`] rows; the time path is empty when
    /// `shared` holds it.
    pub(crate) blocks: Vec<(TimePath, Block)>,
    pub(crate) rows: usize,
}

/// The network output `out` (`[B, D]`) for `x` (`[B, D]`), `labels` (`[B]`), the flat
/// parameters `theta` and the embedding frequencies `freqs` (`[E / 2]`); with
/// [`Save::Activations`] it also returns what the backward pass needs.
///
/// Panics if a length disagrees with `spec` (callers validate user input first).
pub fn forward(
    spec: &MlpSpec,
    theta: &[f32],
    freqs: &[f32],
    x: &[f32],
    labels: &[f32],
    out: &mut [f32],
    save: Save,
) -> Option<Activations> {
    spec.check(theta.len(), freqs.len(), x.len(), labels.len());
    let (d, b) = (spec.data_dim, labels.len());
    assert_eq!(out.len(), b * d, "mlp forward: out must be [B, D]");
    let lay = spec.layout();
    let shared = (b > 0 && labels_shared(labels)).then(|| {
        let mut tp = TimePath::default();
        tp.compute(spec, &lay, theta, freqs, &labels[..1]);
        tp
    });
    struct Task<'o> {
        rows: std::ops::Range<usize>,
        out: &'o mut [f32],
        kept: Vec<(TimePath, Block)>,
    }
    let groups = row_groups(b, BLOCK_ROWS, MAX_GROUPS);
    let mut tasks = Vec::with_capacity(groups.len());
    let mut rest = out;
    for rows in groups {
        let (head, tail) = rest.split_at_mut(rows.len() * d);
        tasks.push(Task {
            rows,
            out: head,
            kept: Vec::new(),
        });
        rest = tail;
    }
    let work = 2 * b * spec.hidden * spec.hidden * (spec.n_layers + 2);
    for_each_mut(&mut tasks, work, |_, task| {
        let (mut tp, mut blk) = (TimePath::default(), Block::default());
        for r0 in task.rows.clone().step_by(BLOCK_ROWS) {
            let r1 = (r0 + BLOCK_ROWS).min(task.rows.end);
            if shared.is_none() {
                tp.compute(spec, &lay, theta, freqs, &labels[r0..r1]);
            }
            blk.compute(
                spec,
                &lay,
                theta,
                &x[r0 * d..r1 * d],
                shared.as_ref().unwrap_or(&tp),
            );
            let o = &mut task.out[(r0 - task.rows.start) * d..(r1 - task.rows.start) * d];
            o.copy_from_slice(&blk.out);
            if spec.scale_by_label {
                for (row, &l) in o.chunks_exact_mut(d).zip(&labels[r0..r1]) {
                    for v in row {
                        *v /= l;
                    }
                }
            }
            if save == Save::Activations {
                task.kept
                    .push((std::mem::take(&mut tp), std::mem::take(&mut blk)));
            }
        }
    });
    (save == Save::Activations).then(|| Activations {
        shared,
        blocks: tasks.into_iter().flat_map(|t| t.kept).collect(),
        rows: b,
    })
}
