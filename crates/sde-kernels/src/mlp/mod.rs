//! The fused forward and backward pass of the time-conditioned MLP score network
//! (`score_nets::Mlp`), over plain `f32` slices:
//!
//! $$\begin{aligned}
//! \tau &= T_1\,\mathrm{SiLU}(T_0\, e(\ell) + t_0) + t_1, \qquad s = \mathrm{SiLU}(\tau),\\
//! h_0 &= W_\text{in} x + b_\text{in},\qquad
//! h_{i+1} = \mathrm{SiLU}(W_i h_i + b_i + U_i s + c_i),\quad i < L,\\
//! \text{out} &= (W_\text{out} h_L + b_\text{out})\ \big(/\ \ell \text{ when scaled}\big),
//! \end{aligned}$$
//!
//! with $e(\ell) = [\sin p, \cos p]$, $p_k = 2\pi w_k \log\ell$ (or $2\pi w_k \ell$: Fourier) or
//! $p_k = f_k \ell$ (positional), the frequencies given by the caller.
//!
//! **How it is fast.** Rows are processed in blocks of [`BLOCK_ROWS`] (all of a block's
//! activations stay in cache), blocks are grouped into at most [`MAX_GROUPS`] tasks on the
//! [`crate::parallel`] pool, every product is one single-threaded GEMM, SiLU is the vector
//! [`crate::simd`] one, and when every row has the same label (a sampler step) the time path
//! ($e$, $\tau$, $s$, $U_i s + c_i$) is computed once. The backward pass recomputes the
//! block's forward activations instead of storing them (no memory held between the passes)
//! and sums the per-task weight gradients in task order: results do not depend on the thread
//! count.
//!
//! Parameters are one flat vector in the order of [`MlpSpec::param_shapes`].

mod backward;
mod forward;

pub use backward::{backward, Grads};
pub use forward::{forward, Activations, Save};

/// Rows per block.
pub const BLOCK_ROWS: usize = 256;
/// At most this many tasks (groups of consecutive blocks) per call.
pub const MAX_GROUPS: usize = 16;

/// How the label is embedded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeEmbedding {
    /// $p_k = ((s\, w_k) \cdot 2) \cdot \pi$ in f32, in that order, with $s = \ln \ell$ when
    /// `log_label`, else $s = \ell$.
    Fourier {
        /// Embed $\ln\ell$.
        log_label: bool,
    },
    /// $p_k = \ell f_k$.
    Positional,
}

/// The network's sizes and options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MlpSpec {
    /// Data dimension $D$.
    pub data_dim: usize,
    /// Hidden width $H$.
    pub hidden: usize,
    /// Number of time-conditioned layers $L$.
    pub n_layers: usize,
    /// Embedding dimension $E$ (even).
    pub embedding_dim: usize,
    /// The label embedding.
    pub time: TimeEmbedding,
    /// Divide the output by the label.
    pub scale_by_label: bool,
}

/// Offsets of the parameters in the flat vector.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout {
    pub t0w: usize,
    pub t0b: usize,
    pub t1w: usize,
    pub t1b: usize,
    pub inw: usize,
    pub inb: usize,
    /// Start of layer 0; layer `i` starts at `layer0 + i * layer_len`, holding
    /// `W_i` (H×H), `b_i` (H), `U_i` (H×H), `c_i` (H).
    pub layer0: usize,
    pub layer_len: usize,
    pub outw: usize,
    pub outb: usize,
    pub len: usize,
}

impl MlpSpec {
    /// The parameter shapes in flat-vector order: `temb.0` weight `[H, E]` and bias `[H]`,
    /// `temb.1` `[H, H]`, `[H]`, `input` `[H, D]`, `[H]`, then for each layer `linear`
    /// `[H, H]`, `[H]` and `temb` `[H, H]`, `[H]`, and `output` `[D, H]`, `[D]` (weights are
    /// `[out, in]`, row-major).
    pub fn param_shapes(&self) -> Vec<Vec<usize>> {
        let (d, h, e) = (self.data_dim, self.hidden, self.embedding_dim);
        let mut v = vec![
            vec![h, e],
            vec![h],
            vec![h, h],
            vec![h],
            vec![h, d],
            vec![h],
        ];
        for _ in 0..self.n_layers {
            v.extend([vec![h, h], vec![h], vec![h, h], vec![h]]);
        }
        v.extend([vec![d, h], vec![d]]);
        v
    }

    /// Length of the flat parameter vector.
    pub fn n_params(&self) -> usize {
        self.layout().len
    }

    pub(crate) fn layout(&self) -> Layout {
        let (d, h, e) = (self.data_dim, self.hidden, self.embedding_dim);
        let t0w = 0;
        let t0b = t0w + h * e;
        let t1w = t0b + h;
        let t1b = t1w + h * h;
        let inw = t1b + h;
        let inb = inw + h * d;
        let layer0 = inb + h;
        let layer_len = 2 * (h * h + h);
        let outw = layer0 + self.n_layers * layer_len;
        let outb = outw + d * h;
        Layout {
            t0w,
            t0b,
            t1w,
            t1b,
            inw,
            inb,
            layer0,
            layer_len,
            outw,
            outb,
            len: outb + d,
        }
    }

    /// Panics unless the sizes are usable and the slices match them (the callers validate user
    /// input first; this guards the kernels).
    pub(crate) fn check(&self, theta: usize, freqs: usize, x: usize, labels: usize) {
        assert!(
            self.data_dim > 0 && self.hidden > 0 && self.n_layers > 0,
            "MlpSpec: zero size in {self:?}"
        );
        assert!(
            self.embedding_dim >= 2 && self.embedding_dim % 2 == 0,
            "MlpSpec: embedding_dim must be even, got {}",
            self.embedding_dim
        );
        assert_eq!(theta, self.n_params(), "mlp: parameter vector length");
        assert_eq!(freqs, self.embedding_dim / 2, "mlp: frequency table length");
        assert_eq!(
            x,
            labels * self.data_dim,
            "mlp: x must be [B, D] for B labels"
        );
    }
}

/// Whether every label has the same bits (then the time path is computed once).
pub fn labels_shared(labels: &[f32]) -> bool {
    labels
        .split_first()
        .is_some_and(|(l0, rest)| rest.iter().all(|l| l.to_bits() == l0.to_bits()))
}

/// The embedding $e(\ell)$ of one label into `out` (`[E]`); `p` is scratch for the arguments.
pub(crate) fn embed(spec: &MlpSpec, freqs: &[f32], label: f32, out: &mut [f32], p: &mut Vec<f32>) {
    let half = freqs.len();
    let s = match spec.time {
        TimeEmbedding::Fourier { log_label: true } => label.ln(),
        _ => label,
    };
    p.clear();
    p.extend(freqs.iter().map(|&w| match spec.time {
        TimeEmbedding::Fourier { .. } => ((s * w) * 2.0) * std::f32::consts::PI,
        TimeEmbedding::Positional => s * w,
    }));
    let (sin, cos) = out[..2 * half].split_at_mut(half);
    crate::simd::sincos_to(p, sin, cos);
}

/// Fills the `rows × n` row-major `dst` with copies of the row `bias`.
pub(crate) fn fill_rows(dst: &mut [f32], bias: &[f32]) {
    for row in dst.chunks_exact_mut(bias.len()) {
        row.copy_from_slice(bias);
    }
}

/// `acc[j] += Σ_rows m[r, j]` for the row-major `m` with `acc.len()` columns.
pub(crate) fn add_col_sums(m: &[f32], acc: &mut [f32]) {
    for row in m.chunks_exact(acc.len()) {
        for (a, &v) in acc.iter_mut().zip(row) {
            *a += v;
        }
    }
}

#[cfg(test)]
mod tests;
