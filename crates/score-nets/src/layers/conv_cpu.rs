//! The CPU convolution kernel behind [`super::conv::conv2d`]: per-image im2col into a reused
//! buffer (none for 1x1 stride-1 kernels) and one GEMM per image straight into the output, with
//! the bias as the GEMM's initial value.
//!
//! A whole-batch im2col matrix `[B, C·kh·kw, H·W]` is 75 MB for 256 channels at 32x32 and batch
//! 8: written, then read back by the GEMM, it does not stay in any cache. One image's matrix
//! (9.4 MB) stays in the last-level cache between its construction and its GEMM.
//!
//! Threads: with at least as many images as threads, the images are shared among candle's
//! CPU pool threads, each running a single-threaded GEMM; otherwise the images are processed
//! in turn, each GEMM's columns split among the pool threads (see [`gemm_cols`]). Nothing runs
//! on rayon's pool, so the kernels never have two pools' threads competing for the cores.

use candle_core::WithDType;

/// Geometry of a convolution `x: [B, C, H, W]`, `w: [O, C, kh, kw]`, symmetric zero padding,
/// equal strides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geom {
    pub b: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub kh: usize,
    pub kw: usize,
    pub pad: usize,
    pub stride: usize,
}

impl Geom {
    /// Output height and width.
    pub fn out_hw(&self) -> (usize, usize) {
        (
            (self.h + 2 * self.pad - self.kh) / self.stride + 1,
            (self.w + 2 * self.pad - self.kw) / self.stride + 1,
        )
    }

    fn direct(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.pad == 0 && self.stride == 1
    }
}

/// A pointer shared by parallel workers that write disjoint ranges (every CPU kernel of the
/// layers uses it).
///
/// The contract of every use: while workers run, each element behind the pointer is accessed
/// by at most one worker, or only read; no `&mut` to memory another worker touches is ever
/// live.
#[derive(Clone, Copy)]
pub(super) struct SyncPtr<T>(pub(super) *mut T);
// SAFETY: a `SyncPtr` is an address; moving or sharing it across threads does nothing by
// itself. Every dereference is an `unsafe` call (`slice`, `ptr().add(..)`) whose caller
// guarantees the contract above, so the threads' accesses are disjoint or read-only: exactly
// what `&mut [T]` split into disjoint parts and sent to the workers would allow, which needs
// `T: Send` (the kernels use f32 and f64).
unsafe impl<T: Send> Send for SyncPtr<T> {}
// SAFETY: as for `Send`: `&SyncPtr` only hands out the address, and the accesses made through
// it are disjoint per worker by the contract of each unsafe method.
unsafe impl<T: Send> Sync for SyncPtr<T> {}

impl<T> SyncPtr<T> {
    pub(super) fn ptr(&self) -> *mut T {
        self.0
    }

    /// # Safety
    /// `[off, off + len)` must be in bounds, initialised, and touched by no other worker while
    /// the returned slice lives.
    #[allow(clippy::mut_from_ref)]
    pub(super) unsafe fn slice(&self, off: usize, len: usize) -> &mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(off), len)
    }
}

/// Runs `per_image(dst_b, src_b, threads)` for the `b` images of `dst` (`dst_img` values each)
/// and `src` (`src_img` each): the images spread over candle's pool, one thread each, when there
/// are at least as many as threads; otherwise one after another, each with `threads` threads
/// for its own GEMM.
pub(super) fn for_each_image<T: Send + Sync>(
    dst: &mut [T],
    dst_img: usize,
    src: &[T],
    src_img: usize,
    b: usize,
    threads: usize,
    per_image: impl Fn(&mut [T], &[T], usize) + Sync,
) {
    assert!(
        dst.len() >= b * dst_img,
        "for_each_image: destination too short"
    );
    let out = SyncPtr(dst.as_mut_ptr());
    for_each_image_ptr(out, dst_img, src, src_img, b, threads, |db, sb, t| {
        // SAFETY: image bi owns dst[bi*dst_img .. (bi+1)*dst_img], initialised (dst is a slice)
        per_image(unsafe { db.slice(0, dst_img) }, sb, t)
    });
}

/// [`for_each_image`] writing through a pointer: `per_image(dst_b, src_b, threads)` gets the
/// first element of image b's `dst_img` values. The destination may be uninitialised memory
/// that `per_image` fills (it must write every value it is given before anyone reads them).
pub(super) fn for_each_image_ptr<T: Send + Sync>(
    dst: SyncPtr<T>,
    dst_img: usize,
    src: &[T],
    src_img: usize,
    b: usize,
    threads: usize,
    per_image: impl Fn(SyncPtr<T>, &[T], usize) + Sync,
) {
    // SAFETY (both branches): the caller gives b images of dst_img values at dst.
    let image = |bi: usize| SyncPtr(unsafe { dst.ptr().add(bi * dst_img) });
    if threads > 1 && b >= threads {
        candle_core::utils::barrier_pool().execute_chunked(b, |range| {
            for bi in range {
                per_image(image(bi), &src[bi * src_img..(bi + 1) * src_img], 1);
            }
        });
    } else {
        for bi in 0..b {
            per_image(image(bi), &src[bi * src_img..(bi + 1) * src_img], threads);
        }
    }
}

/// im2col of one image `x: [C, H, W]` into `cols: [C·kh·kw, Ho·Wo]` (row `(c·kh + u)·kw + v`).
fn im2col_image<T: WithDType>(x: &[T], g: &Geom, cols: &mut [T]) {
    let (ho, wo) = g.out_hw();
    let n = ho * wo;
    let (h, w, p, s) = (g.h as isize, g.w as isize, g.pad as isize, g.stride);
    for ci in 0..g.c {
        let xc = &x[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for u in 0..g.kh {
            for v in 0..g.kw {
                let row = (ci * g.kh + u) * g.kw + v;
                let dst = &mut cols[row * n..(row + 1) * n];
                // output columns whose input column is inside the image
                let lo = ((p - v as isize).max(0) as usize).div_ceil(s).min(wo);
                let hi = if w + p - (v as isize) <= 0 {
                    0
                } else {
                    ((w + p - v as isize) as usize).div_ceil(s).min(wo)
                };
                let hi = hi.max(lo);
                for oy in 0..ho {
                    let iy = (oy * s) as isize + u as isize - p;
                    let d = &mut dst[oy * wo..(oy + 1) * wo];
                    if iy < 0 || iy >= h {
                        d.fill(T::zero());
                        continue;
                    }
                    let xr = &xc[iy as usize * g.w..(iy as usize + 1) * g.w];
                    d[..lo].fill(T::zero());
                    d[hi..].fill(T::zero());
                    let ix0 = (lo * s) as isize + v as isize - p;
                    if s == 1 {
                        let ix0 = ix0 as usize;
                        d[lo..hi].copy_from_slice(&xr[ix0..ix0 + (hi - lo)]);
                    } else {
                        for (k, dv) in d[lo..hi].iter_mut().enumerate() {
                            *dv = xr[ix0 as usize + k * s];
                        }
                    }
                }
            }
        }
    }
}

/// The kernels' thread count (`sde_kernels::parallel::num_threads`: candle's CPU thread count,
/// read once).
pub(super) fn num_threads() -> usize {
    sde_kernels::parallel::num_threads()
}

/// `dst[m, n] = lhs[m, k] · rhs[k, n]` (plus `dst` when `read_dst`), `dst` row-major with row
/// stride `n`, `lhs` and `rhs` given as (pointer, row stride, column stride). With `threads > 1` the columns
/// are split among candle's CPU pool threads, each running a single-threaded GEMM: the crate's
/// kernels then use one thread pool (gemm's own parallelism runs on rayon's pool, whose idle
/// threads compete with candle's spinning ones on a busy machine).
///
/// # Safety
/// The pointers must address matrices of the given sizes and strides; `dst` must not alias the
/// operands; `T` must be f32 or f64.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_cols<T: WithDType>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    read_dst: bool,
    lhs: (*const T, isize, isize),
    rhs: (*const T, isize, isize),
    threads: usize,
) {
    // The pointers wrapped so that `one` may run on the pool threads (each on its own columns).
    let (dst, lhs0, rhs0) = (
        SyncPtr(dst),
        SyncPtr(lhs.0 as *mut T),
        SyncPtr(rhs.0 as *mut T),
    );
    let one = |c0: usize, c1: usize, par: gemm::Parallelism| {
        gemm::gemm(
            m,
            c1 - c0,
            k,
            dst.ptr().add(c0),
            1,
            n as isize,
            read_dst,
            lhs0.ptr(),
            lhs.2,
            lhs.1,
            rhs0.ptr().offset(c0 as isize * rhs.2),
            rhs.2,
            rhs.1,
            if read_dst { T::one() } else { T::zero() },
            T::one(),
            false,
            false,
            false,
            par,
        )
    };
    if threads <= 1 || n < 128 {
        return one(0, n, gemm::Parallelism::None);
    }
    let pool = candle_core::utils::barrier_pool();
    // one column block per thread, multiples of 16 (the micro-kernel's width along the columns);
    // execute_chunked runs inline when called from a pool thread (no nested pool call)
    let blocks = pool.n_workers() + 1;
    let per = n.div_ceil(16).div_ceil(blocks) * 16;
    pool.execute_chunked(blocks, |range| {
        for tid in range {
            let (c0, c1) = ((tid * per).min(n), ((tid + 1) * per).min(n));
            if c0 < c1 {
                one(c0, c1, gemm::Parallelism::None);
            }
        }
    });
}

/// The adjoint of [`im2col_image`]: adds every entry of `cols: [C·kh·kw, Ho·Wo]` to the input
/// sample it was copied from, `gx: [C, H, W]` (zeroed first).
fn col2im_image<T: WithDType>(cols: &[T], g: &Geom, gx: &mut [T]) {
    let (ho, wo) = g.out_hw();
    let n = ho * wo;
    let (h, w, p, s) = (g.h as isize, g.w as isize, g.pad as isize, g.stride);
    gx.fill(T::zero());
    for ci in 0..g.c {
        let gc = &mut gx[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for u in 0..g.kh {
            for v in 0..g.kw {
                let row = (ci * g.kh + u) * g.kw + v;
                let src = &cols[row * n..(row + 1) * n];
                let lo = ((p - v as isize).max(0) as usize).div_ceil(s).min(wo);
                let hi = if w + p - (v as isize) <= 0 {
                    0
                } else {
                    ((w + p - v as isize) as usize).div_ceil(s).min(wo)
                };
                let hi = hi.max(lo);
                for oy in 0..ho {
                    let iy = (oy * s) as isize + u as isize - p;
                    if iy < 0 || iy >= h {
                        continue;
                    }
                    let gr = &mut gc[iy as usize * g.w..(iy as usize + 1) * g.w];
                    let sr = &src[oy * wo + lo..oy * wo + hi];
                    let ix0 = ((lo * s) as isize + v as isize - p) as usize;
                    if s == 1 {
                        for (a, &b) in gr[ix0..ix0 + (hi - lo)].iter_mut().zip(sr) {
                            *a += b;
                        }
                    } else {
                        for (k, &b) in sr.iter().enumerate() {
                            gr[ix0 + k * s] += b;
                        }
                    }
                }
            }
        }
    }
}

/// The input gradient of [`conv2d`]: `gy: [B, O, Ho, Wo]`, `w: [O, C, kh, kw]` →
/// `gx: [B, C, H, W]`, per image $\mathrm{col2im}(W^\top g_y)$ with $W$ the `[O, C·kh·kw]`
/// kernel matrix, read transposed in place by the GEMM (no flipped copy of the kernel, and no
/// multiply-adds on the zeros a dilated gradient would hold for strided convolutions).
///
/// Geometries of [`super::winograd`] take its path (the gradient is a convolution there too).
pub(crate) fn conv2d_input_grad<T: WithDType>(gy: &[T], w: &[T], g: &Geom) -> Vec<T> {
    if super::winograd::applies(g) {
        super::winograd::conv3x3_input_grad(gy, w, g)
    } else {
        conv2d_input_grad_gemm(gy, w, g)
    }
}

/// [`conv2d_input_grad`] by per-image GEMM + col2im (any geometry).
pub(super) fn conv2d_input_grad_gemm<T: WithDType>(gy: &[T], w: &[T], g: &Geom) -> Vec<T> {
    let (ho, wo) = g.out_hw();
    let n = ho * wo;
    let k = g.c * g.kh * g.kw;
    let (in_img, out_img) = (g.c * g.h * g.w, g.o * n);
    let mut gx = vec![T::zero(); g.b * in_img];
    let threads = num_threads();
    let per_image = |gxb: &mut [T], gyb: &[T], threads: usize| {
        let direct = g.direct();
        let run = |dst: &mut [T]| {
            // dst[K, N] = W^T[K, O] · gy[O, N]; W^T read with row stride 1, column stride K
            // SAFETY: dst is K x N, w is O x K, gyb is O x N, all in bounds; T is f32 or f64.
            unsafe {
                gemm_cols(
                    k,
                    n,
                    g.o,
                    dst.as_mut_ptr(),
                    false,
                    (w.as_ptr(), 1, k as isize),
                    (gyb.as_ptr(), n as isize, 1),
                    threads,
                )
            }
        };
        if direct {
            run(gxb);
        } else {
            with_cols(k * n, |cols: &mut [T]| {
                run(cols);
                col2im_image(cols, g, gxb);
            });
        }
    };
    for_each_image(&mut gx, in_img, gy, out_img, g.b, threads, per_image);
    gx
}

/// `dst[O, N] = bias ⊗ 1 + lhs[O, K] · rhs[K, N]`, all row-major.
#[allow(clippy::too_many_arguments)]
fn gemm_bias<T: WithDType>(
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
    // SAFETY: dst is m x n, lhs m x k, rhs k x n, all row-major and in bounds; T is f32 or f64.
    unsafe {
        gemm_cols(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            bias.is_some(),
            (lhs.as_ptr(), k as isize, 1),
            (rhs.as_ptr(), n as isize, 1),
            threads,
        )
    }
}

thread_local! {
    /// Each thread's im2col buffer, kept between calls (a fresh one would be zero-filled and
    /// page-faulted in on every convolution). Stored as f64 words, viewed as `T` (f32 or f64).
    static COLS: std::cell::RefCell<Vec<f64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's im2col buffer viewed as `len` elements of `T` (contents
/// unspecified; `im2col_image` writes every element).
pub(super) fn with_cols<T: WithDType, R>(len: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
    assert!(std::mem::size_of::<T>() <= 8 && std::mem::align_of::<T>() <= 8);
    COLS.with(|c| {
        let mut c = c.borrow_mut();
        let words = (len * std::mem::size_of::<T>()).div_ceil(8);
        if c.len() < words {
            c.resize(words, 0.0);
        }
        // SAFETY: the buffer holds at least len * size_of::<T>() initialised bytes, f64 alignment
        // satisfies T's, and every bit pattern is a valid f32 / f64.
        let s = unsafe { std::slice::from_raw_parts_mut(c.as_mut_ptr() as *mut T, len) };
        f(s)
    })
}

/// `y = conv(x, w) + bias`: `x: [B, C, H, W]`, `w: [O, C, kh, kw]` (row-major slices), `bias`
/// `[O]` → `y: [B, O, Ho, Wo]`.
/// 3x3 stride-1 padding-1 convolutions of images of 8x8 and more go through Winograd's
/// F(2x2, 3x3) ([`super::winograd`]), the others through im2col + GEMM.
pub(crate) fn conv2d<T: WithDType>(x: &[T], w: &[T], bias: Option<&[T]>, g: &Geom) -> Vec<T> {
    if super::winograd::applies(g) {
        super::winograd::conv3x3(x, w, bias, g)
    } else {
        conv2d_gemm(x, w, bias, g)
    }
}

/// [`conv2d`] by per-image im2col + GEMM (any geometry).
pub(super) fn conv2d_gemm<T: WithDType>(x: &[T], w: &[T], bias: Option<&[T]>, g: &Geom) -> Vec<T> {
    let (ho, wo) = g.out_hw();
    let n = ho * wo;
    let k = g.c * g.kh * g.kw;
    let (in_img, out_img) = (g.c * g.h * g.w, g.o * n);
    let mut y = vec![T::zero(); g.b * out_img];
    let threads = num_threads();
    let per_image = |yb: &mut [T], xb: &[T], threads: usize| {
        if g.direct() {
            gemm_bias(yb, w, xb, bias, g.o, n, k, threads);
        } else {
            with_cols(k * n, |cols: &mut [T]| {
                im2col_image(xb, g, cols);
                gemm_bias(yb, w, cols, bias, g.o, n, k, threads);
            });
        }
    };
    for_each_image(&mut y, out_img, x, in_img, g.b, threads, per_image);
    y
}

/// The kernel gradient of [`conv2d`]: `x: [B, C, H, W]`, `gy: [B, O, Ho, Wo]` →
/// `gw: [O, C, kh, kw]` = Σ_b gy_b · im2col(x_b)ᵀ (`[O, N] · [N, C·kh·kw]`), the im2col matrix
/// read transposed in place by the GEMM. With at least as many images as threads, each pool
/// thread accumulates its share of the images into its own `[O, C·kh·kw]` sum (then the sums
/// are added); otherwise the images go in turn, each GEMM's columns split among the threads.
pub(crate) fn conv2d_kernel_grad<T: WithDType>(x: &[T], gy: &[T], g: &Geom) -> Vec<T> {
    let (ho, wo) = g.out_hw();
    let n = ho * wo;
    let k = g.c * g.kh * g.kw;
    let (in_img, out_img, size) = (g.c * g.h * g.w, g.o * n, g.o * k);
    let threads = num_threads();
    let parts = if threads > 1 && g.b >= threads {
        threads
    } else {
        1
    };
    let per = g.b.div_ceil(parts);
    let mut acc = vec![T::zero(); parts * size];
    let accumulate = |dst: SyncPtr<T>, images: std::ops::Range<usize>, threads: usize| {
        for (i, bi) in images.enumerate() {
            let gyb = &gy[bi * out_img..(bi + 1) * out_img];
            let xb = &x[bi * in_img..(bi + 1) * in_img];
            // dst[O, K] (+)= gy_b[O, N] · cols[K, N]ᵀ; cols read with row stride 1, column stride N
            // SAFETY: dst is O x K (this caller's part), gyb O x N, cols K x N; T is f32 or f64.
            let run = |cols: &[T]| unsafe {
                gemm_cols(
                    g.o,
                    k,
                    n,
                    dst.ptr(),
                    i > 0,
                    (gyb.as_ptr(), n as isize, 1),
                    (cols.as_ptr(), 1, n as isize),
                    threads,
                )
            };
            if g.direct() {
                run(xb);
            } else {
                with_cols(k * n, |cols: &mut [T]| {
                    im2col_image(xb, g, cols);
                    run(cols);
                });
            }
        }
    };
    let acc_ptr = SyncPtr(acc.as_mut_ptr());
    if parts == 1 {
        accumulate(acc_ptr, 0..g.b, threads);
    } else {
        candle_core::utils::barrier_pool().execute_chunked(parts, |range| {
            for t in range {
                // SAFETY: part t owns acc[t·size .. (t+1)·size]
                let dst = SyncPtr(unsafe { acc_ptr.ptr().add(t * size) });
                accumulate(dst, (t * per).min(g.b)..((t + 1) * per).min(g.b), 1);
            }
        });
    }
    let (sum, rest) = acc.split_at_mut(size);
    for part in rest.chunks_exact(size) {
        for (a, &v) in sum.iter_mut().zip(part) {
            *a += v;
        }
    }
    acc.truncate(size);
    acc
}
