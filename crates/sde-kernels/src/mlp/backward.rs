//! The backward pass (vector-Jacobian product), by row blocks with recomputed activations.

use super::forward::{ensure, Activations, Block, TimePath};
use super::{add_col_sums, labels_shared, Layout, MlpSpec, TimeEmbedding, BLOCK_ROWS, MAX_GROUPS};
use crate::buffers;
use crate::matmul::{gemm, Accumulate, MatMut, MatRef};
use crate::parallel::{for_each_mut, row_groups};
use crate::simd::silu_backward;

/// Where [`backward`] writes: the parameter gradient (always, overwritten), and optionally the
/// input and label gradients (`[B, D]` and `[B]`, overwritten).
#[derive(Debug)]
pub struct Grads<'a> {
    /// $\partial L/\partial\theta$, the flat parameter order.
    pub theta: &'a mut [f32],
    /// $\partial L/\partial x$.
    pub x: Option<&'a mut [f32]>,
    /// $\partial L/\partial \ell$ (through the embedding and the output scaling).
    pub labels: Option<&'a mut [f32]>,
}

/// `dst (+)= a · b` for row-major `a` (`m × k`) and `b` (`k × n`), `b` given as a view.
fn mm(dst: &mut [f32], a: &[f32], m: usize, k: usize, b: MatRef<'_>, acc: Accumulate) {
    let n = b.n_cols();
    gemm(
        MatMut::row_major(dst, m, n),
        MatRef::row_major(a, m, k),
        b,
        acc,
    );
}

/// `g[w..] += dyᵀ · x` for the `[out, in]` weight: `dy` is `rows × out`, `x` is `rows × in`.
fn weight_grad(g: &mut [f32], dy: &[f32], x: &[f32], out: usize, inp: usize) {
    let rows = dy.len() / out;
    gemm(
        MatMut::row_major(g, out, inp),
        MatRef::row_major(dy, rows, out).t(),
        MatRef::row_major(x, rows, inp),
        Accumulate::Add,
    );
}

/// The row-major `[out, in]` weight at `theta[w..]`.
fn weight(theta: &[f32], w: usize, out: usize, inp: usize) -> MatRef<'_> {
    MatRef::row_major(&theta[w..w + out * inp], out, inp)
}

/// One task's scratch and outputs.
struct Task<'a> {
    rows: std::ops::Range<usize>,
    theta_grad: Vec<f32>,
    dx: Option<&'a mut [f32]>,
    dl: Option<&'a mut [f32]>,
}

/// Per-block work buffers of the backward pass (pooled).
#[derive(Default)]
struct Work {
    go: Vec<f32>,
    dh: Vec<f32>,
    dz: Vec<f32>,
    dst: Vec<f32>,
    colsum: Vec<f32>,
    da0: Vec<f32>,
    demb: Vec<f32>,
    dl_scale: Vec<f32>,
}

impl Drop for Work {
    fn drop(&mut self) {
        for v in [
            &mut self.go,
            &mut self.dh,
            &mut self.dz,
            &mut self.dst,
            &mut self.colsum,
            &mut self.da0,
            &mut self.demb,
            &mut self.dl_scale,
        ] {
            buffers::give(std::mem::take(v));
        }
    }
}

/// The vector-Jacobian product of [`super::forward`]: given $\bar y = \partial L/\partial
/// \text{out}$ (`grad_out`, `[B, D]`), writes $\bar\theta$ and, when asked, $\bar x$ and
/// $\bar\ell$. The forward activations come from `saved` (the [`super::forward`] of the same
/// inputs with [`super::Save::Activations`]) or are recomputed block by block.
///
/// The per-task parameter gradients are summed in task order (the task layout depends on `B`
/// only), so the result is the same on any number of threads. Panics if a length disagrees
/// with `spec`.
pub fn backward(
    spec: &MlpSpec,
    theta: &[f32],
    freqs: &[f32],
    x: &[f32],
    labels: &[f32],
    grad_out: &[f32],
    saved: Option<&Activations>,
    grads: Grads<'_>,
) {
    spec.check(theta.len(), freqs.len(), x.len(), labels.len());
    let (d, b) = (spec.data_dim, labels.len());
    assert_eq!(
        grad_out.len(),
        b * d,
        "mlp backward: grad_out must be [B, D]"
    );
    assert_eq!(
        grads.theta.len(),
        theta.len(),
        "mlp backward: theta gradient length"
    );
    let lay = spec.layout();
    grads.theta.fill(0.0);
    let need_dl = grads.labels.is_some();
    // A shared label's time path is computed once per block; its gradient sums the rows'.
    // Per-row label gradients need the per-row path.
    let fwd_shared = labels_shared(labels);
    let shared = !need_dl && fwd_shared;
    let groups = row_groups(b, BLOCK_ROWS, MAX_GROUPS);
    let (mut dx_rest, mut dl_rest) = (grads.x, grads.labels);
    if let Some(v) = dx_rest.as_deref() {
        assert_eq!(v.len(), b * d, "mlp backward: x gradient must be [B, D]");
    }
    if let Some(v) = dl_rest.as_deref() {
        assert_eq!(v.len(), b, "mlp backward: label gradient must be [B]");
    }
    let mut tasks = Vec::with_capacity(groups.len());
    for rows in groups {
        let n = rows.len();
        let dx = dx_rest.take().map(|v| {
            let (head, tail) = v.split_at_mut(n * d);
            dx_rest = Some(tail);
            head
        });
        let dl = dl_rest.take().map(|v| {
            let (head, tail) = v.split_at_mut(n);
            dl_rest = Some(tail);
            head
        });
        tasks.push(Task {
            rows,
            theta_grad: buffers::zeros(theta.len()),
            dx,
            dl,
        });
    }
    let work = 6 * b * spec.hidden * spec.hidden * (spec.n_layers + 2);
    let saved = saved.filter(|a| a.rows == b && a.blocks.len() == b.div_ceil(BLOCK_ROWS));
    for_each_mut(&mut tasks, work, |_, task| {
        let (mut tp_s, mut tp_rows) = (TimePath::default(), TimePath::default());
        let (mut blk_s, mut work) = (Block::default(), Work::default());
        for r0 in task.rows.clone().step_by(BLOCK_ROWS) {
            let r1 = (r0 + BLOCK_ROWS).min(task.rows.end);
            let off = r0 - task.rows.start;
            let dx = task
                .dx
                .as_deref_mut()
                .map(|v| &mut v[off * d..(r1 - task.rows.start) * d]);
            let dl = task
                .dl
                .as_deref_mut()
                .map(|v| &mut v[off..r1 - task.rows.start]);
            let rows = Rows {
                x: &x[r0 * d..r1 * d],
                labels: &labels[r0..r1],
                grad_out: &grad_out[r0 * d..r1 * d],
            };
            // The forward's time path (one shared row when the labels are shared), the block's
            // activations, and the time path the backward pass runs through (per row when
            // label gradients are asked for).
            let kept = saved.map(|a| (&a.blocks[r0 / BLOCK_ROWS], a.shared.as_ref()));
            let fwd_tp: &TimePath = match kept {
                Some((_, Some(one))) => one,
                Some(((tp, _), None)) => tp,
                None => {
                    let l = if fwd_shared {
                        &rows.labels[..1]
                    } else {
                        rows.labels
                    };
                    tp_s.compute(spec, &lay, theta, freqs, l);
                    &tp_s
                }
            };
            let blk: &Block = match kept {
                Some(((_, blk), _)) => blk,
                None => {
                    blk_s.compute(spec, &lay, theta, rows.x, fwd_tp);
                    &blk_s
                }
            };
            let tp: &TimePath = if fwd_tp.rows == 1 && !shared && rows.labels.len() > 1 {
                tp_rows.compute(spec, &lay, theta, freqs, rows.labels);
                &tp_rows
            } else {
                fwd_tp
            };
            block_backward(
                spec,
                &lay,
                theta,
                freqs,
                rows,
                tp,
                blk,
                &mut work,
                &mut task.theta_grad,
                dx,
                dl,
            );
        }
    });
    for t in tasks {
        for (a, &v) in grads.theta.iter_mut().zip(&t.theta_grad) {
            *a += v;
        }
        buffers::give(t.theta_grad);
    }
}

/// The inputs of one block.
struct Rows<'a> {
    x: &'a [f32],
    labels: &'a [f32],
    grad_out: &'a [f32],
}

#[allow(clippy::too_many_arguments)]
fn block_backward(
    spec: &MlpSpec,
    lay: &Layout,
    theta: &[f32],
    freqs: &[f32],
    rows: Rows<'_>,
    tp: &TimePath,
    blk: &Block,
    work: &mut Work,
    g: &mut [f32],
    dx: Option<&mut [f32]>,
    dl: Option<&mut [f32]>,
) {
    let (d, h, e, n) = (
        spec.data_dim,
        spec.hidden,
        spec.embedding_dim,
        spec.n_layers,
    );
    let Work {
        go,
        dh,
        dz,
        dst,
        colsum,
        da0,
        demb,
        dl_scale,
    } = work;
    let labels = rows.labels;
    let nb = labels.len();
    let m = nb * h;
    let bt = tp.rows;

    // Output layer, with the scaling out = u / ℓ: ∂/∂u = ȳ / ℓ, ∂/∂ℓ = −Σ_d ȳ u / ℓ².
    go.clear();
    go.extend_from_slice(rows.grad_out);
    dl_scale.clear();
    dl_scale.resize(if dl.is_some() { nb } else { 0 }, 0.0);
    if spec.scale_by_label {
        for (r, (row, &l)) in go.chunks_exact_mut(d).zip(labels).enumerate() {
            if let Some(s) = dl_scale.get_mut(r) {
                let u = &blk.out[r * d..(r + 1) * d];
                *s = -row.iter().zip(u).map(|(a, b)| a * b).sum::<f32>() / (l * l);
            }
            for v in row {
                *v /= l;
            }
        }
    }
    let hl = &blk.h[n * m..(n + 1) * m];
    weight_grad(&mut g[lay.outw..lay.outb], go, hl, d, h);
    add_col_sums(go, &mut g[lay.outb..lay.outb + d]);
    ensure(dh, m);
    mm(
        dh,
        go,
        nb,
        d,
        weight(theta, lay.outw, d, h),
        Accumulate::Overwrite,
    );

    // Hidden layers, last to first.
    ensure(dst, bt * h);
    dst.fill(0.0);
    ensure(colsum, h);
    ensure(dz, m);
    for i in (0..n).rev() {
        let base = lay.layer0 + i * lay.layer_len;
        let (wi, bi, ui, ci) = (base, base + h * h, base + h * h + h, base + 2 * h * h + h);
        dz.copy_from_slice(dh);
        silu_backward(&blk.z[i * m..(i + 1) * m], dz);
        weight_grad(&mut g[wi..bi], dz, &blk.h[i * m..(i + 1) * m], h, h);
        colsum.fill(0.0);
        add_col_sums(dz, colsum);
        for (k, &c) in colsum.iter().enumerate() {
            g[bi + k] += c;
            g[ci + k] += c;
        }
        // The time term U_i s + c_i: per row, or shared by the rows (its gradient their sum).
        let dtt: &[f32] = if bt == 1 { colsum } else { dz };
        weight_grad(&mut g[ui..ci], dtt, &tp.st, h, h);
        mm(dst, dtt, bt, h, weight(theta, ui, h, h), Accumulate::Add);
        mm(
            dh,
            dz,
            nb,
            h,
            weight(theta, wi, h, h),
            Accumulate::Overwrite,
        );
    }

    // Input layer h_0 = W_in x + b_in.
    weight_grad(&mut g[lay.inw..lay.inb], dh, rows.x, h, d);
    add_col_sums(dh, &mut g[lay.inb..lay.inb + h]);
    if let Some(dx) = dx {
        mm(
            dx,
            dh,
            nb,
            h,
            weight(theta, lay.inw, h, d),
            Accumulate::Overwrite,
        );
    }

    // Time path: τ = T_1 g_0 + t_1, g_0 = SiLU(a_0), a_0 = T_0 e + t_0.
    silu_backward(&tp.tau, dst);
    weight_grad(&mut g[lay.t1w..lay.t1b], dst, &tp.g0, h, h);
    add_col_sums(dst, &mut g[lay.t1b..lay.t1b + h]);
    ensure(da0, bt * h);
    mm(
        da0,
        dst,
        bt,
        h,
        weight(theta, lay.t1w, h, h),
        Accumulate::Overwrite,
    );
    silu_backward(&tp.a0, da0);
    weight_grad(&mut g[lay.t0w..lay.t0b], da0, &tp.emb, h, e);
    add_col_sums(da0, &mut g[lay.t0b..lay.t0b + h]);
    if let Some(dl) = dl {
        // bt = nb here (label gradients use the per-row path).
        ensure(demb, bt * e);
        mm(
            demb,
            da0,
            bt,
            h,
            weight(theta, lay.t0w, h, e),
            Accumulate::Overwrite,
        );
        let half = e / 2;
        for (r, &l) in labels.iter().enumerate() {
            let de = &demb[r * e..(r + 1) * e];
            let (emb_sin, emb_cos) = tp.emb[r * e..(r + 1) * e].split_at(half);
            // e = [sin p, cos p]: ∂/∂p_k = cos p_k ē_k − sin p_k ē_{half+k}
            let dp = |k: usize| emb_cos[k] * de[k] - emb_sin[k] * de[half + k];
            let ds: f32 = match spec.time {
                TimeEmbedding::Fourier { .. } => (0..half)
                    .map(|k| dp(k) * 2.0 * std::f32::consts::PI * freqs[k])
                    .sum(),
                TimeEmbedding::Positional => (0..half).map(|k| dp(k) * freqs[k]).sum(),
            };
            let d_emb = match spec.time {
                TimeEmbedding::Fourier { log_label: true } => ds / l,
                _ => ds,
            };
            dl[r] = d_emb + dl_scale.get(r).copied().unwrap_or(0.0);
        }
    }
}
