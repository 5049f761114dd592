//! 2-D convolutions on the CPU (forward, input gradient, kernel gradient, bias gradient) by
//! per-image im2col into a reused buffer (none for 1x1 stride-1 kernels) and one GEMM per image
//! straight into the output, with the bias as the GEMM's initial value. 3x3 stride-1 padding-1
//! convolutions of images of 8x8 and more go through [`crate::winograd`] instead.
//!
//! A whole-batch im2col matrix `[B, C·kh·kw, H·W]` is 75 MB for 256 channels at 32x32 and batch
//! 8: written, then read back by the GEMM, it does not stay in any cache. One image's matrix
//! (9.4 MB) stays in the last-level cache between its construction and its GEMM.
//!
//! Threads ([`crate::parallel`]): with at least as many images as threads, the images are shared
//! among candle's CPU pool threads, each running a single-threaded GEMM; otherwise the images go
//! in turn, each GEMM's columns split among the pool threads. Every output value is the same sum
//! in the same order either way, except the kernel gradient's, which sums one partial gradient
//! per thread when the images are shared (its bits then depend on the thread count).

mod gemm;
mod im2col;

pub(crate) use gemm::{gemm_cols, Dst, Mat};
use im2col::{col2im_image, im2col_image};

use crate::float::Float;
use crate::parallel::{self, num_threads};

/// The geometry of a convolution `x: [B, C, H, W]`, `w: [O, C, kh, kw]` with symmetric zero
/// padding and equal strides, all tensors contiguous row-major slices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dGeom {
    /// Images $B$.
    pub b: usize,
    /// Input channels $C$.
    pub c: usize,
    /// Input height $H$.
    pub h: usize,
    /// Input width $W$.
    pub w: usize,
    /// Output channels $O$.
    pub o: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Zero padding on each side.
    pub pad: usize,
    /// Stride along both axes.
    pub stride: usize,
}

impl Conv2dGeom {
    /// Output height and width `(Ho, Wo)`. Panics on a geometry [`Self::is_valid`] refuses.
    pub fn out_hw(&self) -> (usize, usize) {
        assert!(self.is_valid(), "conv2d: invalid geometry {self:?}");
        (
            (self.h + 2 * self.pad - self.kh) / self.stride + 1,
            (self.w + 2 * self.pad - self.kw) / self.stride + 1,
        )
    }

    /// Whether the kernel (at least 1x1) fits the padded input and the stride is at least 1.
    pub fn is_valid(&self) -> bool {
        self.stride > 0
            && self.kh > 0
            && self.kw > 0
            && self.h + 2 * self.pad >= self.kh
            && self.w + 2 * self.pad >= self.kw
    }

    /// Values of `x`: $B C H W$.
    pub fn input_len(&self) -> usize {
        self.b * self.c * self.h * self.w
    }

    /// Values of `y`: $B O H_o W_o$.
    pub fn output_len(&self) -> usize {
        let (ho, wo) = self.out_hw();
        self.b * self.o * ho * wo
    }

    /// Values of `w`: $O C k_h k_w$.
    pub fn kernel_len(&self) -> usize {
        self.o * self.c * self.kh * self.kw
    }

    /// A 1x1 stride-1 unpadded kernel: the image itself is the GEMM operand (no im2col).
    fn direct(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.pad == 0 && self.stride == 1
    }

    /// Panics unless the geometry is valid and the operands have its lengths.
    pub(crate) fn check(&self, who: &str, operands: &[(&str, usize, usize)]) {
        assert!(self.is_valid(), "{who}: invalid geometry {self:?}");
        for &(name, got, want) in operands {
            assert!(
                got == want,
                "{who}: {name} has {got} values, {want} expected for {self:?}"
            );
        }
    }
}

/// Runs `per_image(dst_b, src_b, threads)` for the `b` images of `dst` (`dst_img` values each)
/// and `src` (`src_img` each): spread over the pool, one thread each, when there are at least as
/// many as threads; otherwise one after another, each with all `threads` for its own GEMM.
/// `work` is the floating-point work of all images ([`parallel::for_each_chunk_run`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn for_each_image<D: Send, S: Sync>(
    dst: &mut [D],
    dst_img: usize,
    src: &[S],
    src_img: usize,
    b: usize,
    threads: usize,
    work: usize,
    per_image: impl Fn(&mut [D], &[S], usize) + Sync,
) {
    let dst = &mut dst[..b * dst_img];
    let src_of = |bi: usize| &src[bi * src_img..(bi + 1) * src_img];
    if threads > 1 && b >= threads {
        parallel::for_each_chunk_run(dst, dst_img, work, |images, run| {
            for (bi, d) in images.zip(run.chunks_mut(dst_img)) {
                per_image(d, src_of(bi), 1);
            }
        });
    } else {
        for (bi, d) in dst.chunks_mut(dst_img.max(1)).enumerate() {
            per_image(d, src_of(bi), threads);
        }
    }
}

/// `y = conv(x, w) + bias`: `x: [B, C, H, W]`, `w: [O, C, kh, kw]`, `bias: [O]` →
/// `y: [B, O, Ho, Wo]`, $y_{b,o,i,j} = \beta_o + \sum_{c,u,v} w_{o,c,u,v}\,
/// x_{b,c,s i+u-p,\,s j+v-p}$. Geometries of [`crate::winograd::applies`] take Winograd's
/// path, the others [`conv2d_im2col`]. Panics if a length does not match `g`.
pub fn conv2d<T: Float>(x: &[T], w: &[T], bias: Option<&[T]>, g: &Conv2dGeom) -> Vec<T> {
    if crate::winograd::applies(g) {
        crate::winograd::conv3x3(x, w, bias, g)
    } else {
        conv2d_im2col(x, w, bias, g)
    }
}

/// [`conv2d`] by per-image im2col + GEMM (any geometry).
pub fn conv2d_im2col<T: Float>(x: &[T], w: &[T], bias: Option<&[T]>, g: &Conv2dGeom) -> Vec<T> {
    g.check(
        "conv2d",
        &[
            ("x", x.len(), g.input_len()),
            ("w", w.len(), g.kernel_len()),
            ("bias", bias.map_or(g.o, <[T]>::len), g.o),
        ],
    );
    let (ho, wo) = g.out_hw();
    let n = ho * wo;
    let k = g.c * g.kh * g.kw;
    let (in_img, out_img) = (g.c * g.h * g.w, g.o * n);
    let mut y = vec![T::zero(); g.b * out_img];
    let per_image = |yb: &mut [T], xb: &[T], threads: usize| {
        if g.direct() {
            gemm_bias(yb, w, xb, bias, g.o, n, k, threads);
        } else {
            T::with_scratch(k * n, |cols| {
                im2col_image(xb, g, cols);
                gemm_bias(yb, w, cols, bias, g.o, n, k, threads);
            });
        }
    };
    let work = 2 * g.b * out_img * k;
    let threads = num_threads();
    for_each_image(&mut y, out_img, x, in_img, g.b, threads, work, per_image);
    y
}

/// `dst[O, N] = bias ⊗ 1 + lhs[O, K] · rhs[K, N]`, all row-major.
#[allow(clippy::too_many_arguments)]
fn gemm_bias<T: Float>(
    dst: &mut [T],
    lhs: &[T],
    rhs: &[T],
    bias: Option<&[T]>,
    m: usize,
    n: usize,
    k: usize,
    threads: usize,
) {
    if let Some(bias) = bias {
        for (row, &bv) in dst.chunks_exact_mut(n).zip(bias) {
            row.fill(bv);
        }
    }
    gemm_cols(
        m,
        n,
        k,
        Dst::init(dst),
        bias.is_some(),
        Mat::new(lhs, k, 1),
        Mat::new(rhs, n, 1),
        threads,
    );
}

/// The input gradient of [`conv2d`]: `gy: [B, O, Ho, Wo]`, `w: [O, C, kh, kw]` →
/// `gx: [B, C, H, W]`. Winograd's path where [`crate::winograd::applies`] (the gradient is a
/// convolution there too), else [`conv2d_input_grad_im2col`]. Panics if a length does not match.
pub fn conv2d_input_grad<T: Float>(gy: &[T], w: &[T], g: &Conv2dGeom) -> Vec<T> {
    if crate::winograd::applies(g) {
        crate::winograd::conv3x3_input_grad(gy, w, g)
    } else {
        conv2d_input_grad_im2col(gy, w, g)
    }
}

/// [`conv2d_input_grad`] for any geometry: per image $\mathrm{col2im}(W^\top g_y)$ with $W$ the
/// `[O, C·kh·kw]` kernel matrix, read transposed in place by the GEMM (no flipped copy of the
/// kernel, and no multiply-adds on the zeros a dilated gradient would hold for strided
/// convolutions).
pub fn conv2d_input_grad_im2col<T: Float>(gy: &[T], w: &[T], g: &Conv2dGeom) -> Vec<T> {
    g.check(
        "conv2d_input_grad",
        &[
            ("gy", gy.len(), g.output_len()),
            ("w", w.len(), g.kernel_len()),
        ],
    );
    let (ho, wo) = g.out_hw();
    let n = ho * wo;
    let k = g.c * g.kh * g.kw;
    let (in_img, out_img) = (g.c * g.h * g.w, g.o * n);
    let mut gx = vec![T::zero(); g.b * in_img];
    let per_image = |gxb: &mut [T], gyb: &[T], threads: usize| {
        // dst[K, N] = Wᵀ[K, O] · gy[O, N]; Wᵀ read with row stride 1, column stride K
        let run = |dst: &mut [T]| {
            gemm_cols(
                k,
                n,
                g.o,
                Dst::init(dst),
                false,
                Mat::new(w, 1, k),
                Mat::new(gyb, n, 1),
                threads,
            )
        };
        if g.direct() {
            run(gxb);
        } else {
            T::with_scratch(k * n, |cols| {
                run(cols);
                col2im_image(cols, g, gxb);
            });
        }
    };
    let work = 2 * g.b * out_img * k;
    let threads = num_threads();
    for_each_image(&mut gx, in_img, gy, out_img, g.b, threads, work, per_image);
    gx
}

/// The most partial sums [`conv2d_kernel_grad`] splits a batch into (a multiple of the usual
/// thread counts 1, 2, 4 and 8, so the runs share out evenly).
pub const KERNEL_GRAD_PARTS: usize = 8;

/// The kernel gradient of [`conv2d`]: `x: [B, C, H, W]`, `gy: [B, O, Ho, Wo]` →
/// `gw: [O, C, kh, kw]` = Σ_b gy_b · im2col(x_b)ᵀ (`[O, N] · [N, C·kh·kw]`), the im2col matrix
/// read transposed in place by the GEMM. The images are cut into [`KERNEL_GRAD_PARTS`] (or `B`
/// if fewer) runs of consecutive images, a layout set by `B` alone: each run accumulates into its
/// own `[O, C·kh·kw]` sum, the runs in parallel, and the sums are added in run order, so the
/// result is bit-identical on any number of threads. A single image's GEMM instead splits its
/// columns among the threads (which does not change any output's summation order).
/// Panics if a length does not match `g`.
pub fn conv2d_kernel_grad<T: Float>(x: &[T], gy: &[T], g: &Conv2dGeom) -> Vec<T> {
    g.check(
        "conv2d_kernel_grad",
        &[
            ("x", x.len(), g.input_len()),
            ("gy", gy.len(), g.output_len()),
        ],
    );
    let (ho, wo) = g.out_hw();
    let n = ho * wo;
    let k = g.c * g.kh * g.kw;
    let (in_img, out_img, size) = (g.c * g.h * g.w, g.o * n, g.o * k);
    let threads = num_threads();
    // runs of `per` consecutive images, their number set by B alone (not by the thread count)
    let per = g.b.div_ceil(g.b.clamp(1, KERNEL_GRAD_PARTS)).max(1);
    let parts = g.b.div_ceil(per).max(1);
    let mut acc = vec![T::zero(); parts * size];
    let accumulate = |dst: &mut [T], images: std::ops::Range<usize>, threads: usize| {
        for (i, bi) in images.enumerate() {
            let gyb = &gy[bi * out_img..(bi + 1) * out_img];
            let xb = &x[bi * in_img..(bi + 1) * in_img];
            // dst[O, K] (+)= gy_b[O, N] · cols[K, N]ᵀ; cols read with row stride 1, column
            // stride N
            let run = |dst: &mut [T], cols: &[T]| {
                gemm_cols(
                    g.o,
                    k,
                    n,
                    Dst::init(dst),
                    i > 0,
                    Mat::new(gyb, n, 1),
                    Mat::new(cols, 1, n),
                    threads,
                )
            };
            if g.direct() {
                run(dst, xb);
            } else {
                T::with_scratch(k * n, |cols| {
                    im2col_image(xb, g, cols);
                    run(dst, cols);
                });
            }
        }
    };
    if parts == 1 {
        accumulate(&mut acc, 0..g.b, threads);
    } else {
        let work = 2 * g.b * out_img * k;
        parallel::for_each_chunk_run(&mut acc, size, work, |ts, run| {
            for (t, dst) in ts.zip(run.chunks_mut(size)) {
                accumulate(dst, (t * per).min(g.b)..((t + 1) * per).min(g.b), 1);
            }
        });
    }
    let (sum, rest) = acc.split_at_mut(size);
    for part in rest.chunks_exact(size.max(1)) {
        for (a, &v) in sum.iter_mut().zip(part) {
            *a += v;
        }
    }
    acc.truncate(size);
    acc
}

/// The bias gradient of [`conv2d`]: `gy: [B, C, S]` (any `S` positions per channel) → `[C]`,
/// $\sum_b \sum_s g_{b,c,s}$, over eight interleaved partial sums per image and channel (a fixed
/// order), images added in order. Panics if `gy` does not hold `B C S` values.
pub fn channel_sum<T: Float>(gy: &[T], b: usize, c: usize, s: usize) -> Vec<T> {
    assert_eq!(
        gy.len(),
        b * c * s,
        "channel_sum: {} values for [{b}, {c}, {s}]",
        gy.len()
    );
    let mut out = vec![T::zero(); c];
    if c == 0 || s == 0 {
        return out;
    }
    for img in gy.chunks_exact(c * s) {
        for (o, plane) in out.iter_mut().zip(img.chunks_exact(s)) {
            let mut acc = [T::zero(); 8];
            let mut it = plane.chunks_exact(8);
            for q in &mut it {
                for (a, &v) in acc.iter_mut().zip(q) {
                    *a += v;
                }
            }
            let tail = it.remainder().iter().fold(T::zero(), |a, &v| a + v);
            *o += acc.iter().fold(tail, |a, &v| a + v);
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests;
