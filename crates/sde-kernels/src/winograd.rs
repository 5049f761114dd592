//! 3x3, stride-1, padding-1 convolutions on the CPU by Winograd's minimal filtering F(2x2, 3x3)
//! (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
//!
//! Every 2x2 block of outputs comes from a 4x4 tile d of the padded input:
//!
//! Y = Aᵀ [ Σ_c (G g_c Gᵀ) ⊙ (Bᵀ d_c B) ] A,
//!
//! with g_c the 3x3 kernel of input channel c and
//!
//! Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]],
//! G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]],
//! Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]].
//!
//! The sum over channels is, for each of the 16 tile positions ξ, one GEMM
//! M_ξ[O, tiles] = U_ξ[O, C] · V_ξ[C, tiles]: 16 · O · C · H·W/4 multiply–adds against
//! 9 · O · C · H·W for im2col + GEMM, 2.25x fewer. The transforms are additions (and the
//! halvings of G), so the result differs from the direct sum by a few float rounding steps
//! (tested against [`crate::conv::conv2d_im2col`]).
//!
//! The input gradient of such a convolution is the same convolution of the output gradient with
//! the kernel flipped and its channels swapped, so it takes the same path.
//!
//! Threads ([`crate::parallel`]): images spread over the pool as in [`crate::conv`]; a single
//! image splits each stage instead (channels for the transforms, tile positions for the GEMMs).
//! Every value is computed the same way whatever the split.

use std::mem::MaybeUninit;
use std::ops::Range;

use crate::conv::{for_each_image, gemm_cols, Conv2dGeom as Geom, Dst, Mat};
use crate::float::Float;
use crate::parallel::{self, num_threads, SharedMut};

/// Tile positions of F(2x2, 3x3): 4x4.
const XI: usize = 16;

/// Whether `g` is a convolution this path computes, and worth it: 3x3, stride 1, padding 1,
/// and at least 16 output tiles per image (8x8 pixels; on smaller images the 16 GEMMs are
/// too thin to beat one im2col GEMM).
pub fn applies(g: &Geom) -> bool {
    g.kh == 3 && g.kw == 3 && g.stride == 1 && g.pad == 1 && g.h.div_ceil(2) * g.w.div_ceil(2) >= 16
}

/// The 16 x 9 matrix of g ↦ G g Gᵀ on row-major 3x3 kernels: U_ξ = Σ_k K[ξ, k] g_k, with
/// ξ = 4 i + j and k = 3 r + s, K[ξ, k] = G[i, r] G[j, s].
fn kernel_matrix<T: Float>() -> [T; XI * 9] {
    const G: [[f64; 3]; 4] = [
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5],
        [0.0, 0.0, 1.0],
    ];
    let mut k = [T::zero(); XI * 9];
    for i in 0..4 {
        for j in 0..4 {
            for r in 0..3 {
                for s in 0..3 {
                    k[(i * 4 + j) * 9 + r * 3 + s] = T::from_f64(G[i][r] * G[j][s]);
                }
            }
        }
    }
    k
}

/// U_ξ = (G g Gᵀ)_ξ for every (o, c): `w: [O, C, 3, 3]` → `[16, O, C]`, as one GEMM
/// U[16, O·C] = K[16, 9] · W[O·C, 9]ᵀ (columns split over candle's pool).
fn kernel_transform<T: Float>(w: &[T], o: usize, c: usize) -> Vec<T> {
    let n = o * c;
    let k = kernel_matrix::<T>();
    // Not zero-filled (a serial pass of up to 16 O C values): the GEMM, which does not read its
    // destination here, writes every value.
    let mut u: Vec<T> = Vec::with_capacity(XI * n);
    gemm_cols(
        XI,
        n,
        9,
        Dst::uninit(&mut u.spare_capacity_mut()[..XI * n]),
        false,
        Mat::new(&k, 9, 1),
        // w as the 9 x n matrix with row stride 1 and column stride 9 (n kernels of 9 values)
        Mat::new(w, 1, 9),
        num_threads(),
    );
    // SAFETY: the capacity is 16 n, and `gemm_cols` with an uninitialised destination writes
    // all of its 16 x n values.
    unsafe { u.set_len(XI * n) };
    u
}

/// A transformed kernel `u: [16, O, C]` as the left operands of the 16 GEMMs: U_ξ itself for
/// the convolution, or, for its input gradient (`flipped`), the transform of the flipped,
/// channel-swapped kernel w̃[c, o] = rot180(w[o, c]), read from `u` without a copy: G J = Q G
/// for the 3x3 reversal J and the 4x4 permutation Q of rows 0 and 3, so the transform of w̃ at
/// (i, j) is U at (q(i), q(j)), transposed.
struct Kernel<T> {
    u: Vec<T>,
    o: usize,
    c: usize,
    flipped: bool,
}

impl<T: Float> Kernel<T> {
    /// The left operand of GEMM ξ.
    fn lhs(&self, xi: usize) -> Mat<'_, T> {
        const Q: [usize; 4] = [3, 1, 2, 0];
        let plane = self.o * self.c;
        if self.flipped {
            let xi = Q[xi / 4] * 4 + Q[xi % 4];
            Mat::new(&self.u[xi * plane..], 1, self.c)
        } else {
            Mat::new(&self.u[xi * plane..], self.c, 1)
        }
    }
}

/// V_ξ = (Bᵀ d B)_ξ for the tiles of `channels` of one image `x: [C, H, W]` into
/// `v: [16, C, tiles]`, written through a shared address: the channel ranges of concurrent
/// callers are disjoint, and channel `ci` owns rows `(ξ, ci)` of every plane. One row of tiles at
/// a time, every step a loop over the row's tiles (vectorised).
///
/// # Safety
/// `v` must address `16 · C · tiles` initialised values, of which no other task touches the
/// rows of `channels` while this runs.
unsafe fn input_transform<T: Float>(x: &[T], g: &Geom, channels: Range<usize>, v: SharedMut<T>) {
    let (th, tw) = (g.h.div_ceil(2), g.w.div_ceil(2));
    let tiles = th * tw;
    // the channel, zero-padded to (2 th + 2) x (2 tw + 2)
    let (ph, pw) = (2 * th + 2, 2 * tw + 2);
    let mut pad = vec![T::zero(); ph * pw];
    // Bᵀ d for the four rows of a row of tiles
    let mut t = vec![T::zero(); 4 * pw];
    for ci in channels {
        let xc = &x[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for (y, row) in xc.chunks_exact(g.w).enumerate() {
            pad[(y + 1) * pw + 1..(y + 1) * pw + 1 + g.w].copy_from_slice(row);
        }
        for ty in 0..th {
            let d = &pad[2 * ty * pw..(2 * ty + 4) * pw];
            let (d0, rest) = d.split_at(pw);
            let (d1, rest) = rest.split_at(pw);
            let (d2, d3) = rest.split_at(pw);
            let (t0, rest) = t.split_at_mut(pw);
            let (t1, rest) = rest.split_at_mut(pw);
            let (t2, t3) = rest.split_at_mut(pw);
            for k in 0..pw {
                t0[k] = d0[k] - d2[k];
                t1[k] = d1[k] + d2[k];
                t2[k] = d2[k] - d1[k];
                t3[k] = d1[k] - d3[k];
            }
            for (i, ti) in t.chunks_exact(pw).enumerate() {
                // SAFETY: row (i·4 + j, ci) of [16, C, tiles], values ty·tw .. ty·tw + tw, is
                // inside `v` (i, j < 4, ci < C, ty < th) and belongs to channel ci, which is
                // this caller's only (the function's contract); the four rows are disjoint.
                let row = |j: usize| unsafe {
                    v.add(((i * 4 + j) * g.c + ci) * tiles + ty * tw).slice(tw)
                };
                let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
                for tx in 0..tw {
                    let e = &ti[2 * tx..2 * tx + 4];
                    r0[tx] = e[0] - e[2];
                    r1[tx] = e[1] + e[2];
                    r2[tx] = e[2] - e[1];
                    r3[tx] = e[1] - e[3];
                }
            }
        }
    }
}

/// Y = Aᵀ M A (+ bias) for output channels `channels` of one image, from `m: [16, O, tiles]`
/// into `y`, those channels' `[H, W]` planes (possibly uninitialised; every value is written).
/// One row of tiles at a time.
fn output_transform<T: Float>(
    m: &[T],
    bias: Option<&[T]>,
    g: &Geom,
    channels: Range<usize>,
    y: &mut [MaybeUninit<T>],
) {
    let (th, tw) = (g.h.div_ceil(2), g.w.div_ceil(2));
    let tiles = th * tw;
    // Aᵀ M for a row of tiles: two rows of four values per tile, lane-wise
    let mut r = vec![T::zero(); 8 * tw];
    for (oc, yc) in channels.zip(y.chunks_exact_mut(g.h * g.w)) {
        let b = bias.map_or(T::zero(), |b| b[oc]);
        for ty in 0..th {
            let mrow = |xi: usize| {
                let at = (xi * g.o + oc) * tiles + ty * tw;
                &m[at..at + tw]
            };
            for j in 0..4 {
                let (m0, m1, m2, m3) = (mrow(j), mrow(4 + j), mrow(8 + j), mrow(12 + j));
                let (ra, rb) = r.split_at_mut(4 * tw);
                let (ra, rb) = (&mut ra[j * tw..(j + 1) * tw], &mut rb[j * tw..(j + 1) * tw]);
                for tx in 0..tw {
                    ra[tx] = m0[tx] + m1[tx] + m2[tx];
                    rb[tx] = m1[tx] - m2[tx] - m3[tx];
                }
            }
            for i in 0..2 {
                let yy = 2 * ty + i;
                if yy >= g.h {
                    continue;
                }
                let ri = &r[i * 4 * tw..(i + 1) * 4 * tw];
                let (q0, q1, q2, q3) = (
                    &ri[..tw],
                    &ri[tw..2 * tw],
                    &ri[2 * tw..3 * tw],
                    &ri[3 * tw..],
                );
                let out = &mut yc[yy * g.w..(yy + 1) * g.w];
                let mut pairs = out.chunks_exact_mut(2);
                for (tx, pair) in (&mut pairs).enumerate() {
                    pair[0].write(q0[tx] + q1[tx] + q2[tx] + b);
                    pair[1].write(q1[tx] - q2[tx] - q3[tx] + b);
                }
                if let [last] = pairs.into_remainder() {
                    let tx = tw - 1;
                    last.write(q0[tx] + q1[tx] + q2[tx] + b);
                }
            }
        }
    }
}

/// `y = conv(x, w) + bias` for `g` with [`applies`]`(g)`: `x: [B, C, H, W]`, `w: [O, C, 3, 3]`,
/// `bias: [O]` → `y: [B, O, H, W]`. Panics if `g` is not such a convolution or a length does not
/// match.
pub fn conv3x3<T: Float>(x: &[T], w: &[T], bias: Option<&[T]>, g: &Geom) -> Vec<T> {
    assert!(
        applies(g),
        "winograd::conv3x3: {g:?} is not a 3x3 same convolution of 8x8+"
    );
    g.check(
        "winograd::conv3x3",
        &[
            ("x", x.len(), g.input_len()),
            ("w", w.len(), g.kernel_len()),
            ("bias", bias.map_or(g.o, <[T]>::len), g.o),
        ],
    );
    let kernel = Kernel {
        u: kernel_transform(w, g.o, g.c),
        o: g.o,
        c: g.c,
        flipped: false,
    };
    run(x, &kernel, bias, g)
}

/// The input gradient of a convolution with [`applies`]`(g)`: `gy: [B, O, H, W]`,
/// `w: [O, C, 3, 3]` → `gx: [B, C, H, W]` = conv(gy, w̃) with w̃[c, o, u, v] = w[o, c, 2−u, 2−v].
/// Panics as [`conv3x3`].
pub fn conv3x3_input_grad<T: Float>(gy: &[T], w: &[T], g: &Geom) -> Vec<T> {
    assert!(
        applies(g),
        "winograd::conv3x3_input_grad: {g:?} is not a 3x3 same convolution"
    );
    g.check(
        "winograd::conv3x3_input_grad",
        &[
            ("gy", gy.len(), g.output_len()),
            ("w", w.len(), g.kernel_len()),
        ],
    );
    let kernel = Kernel {
        u: kernel_transform(w, g.o, g.c),
        o: g.o,
        c: g.c,
        flipped: true,
    };
    let gt = Geom {
        c: g.o,
        o: g.c,
        ..*g
    };
    run(gy, &kernel, None, &gt)
}

/// The convolution of `x` with a transformed kernel, for geometry `g`.
fn run<T: Float>(x: &[T], kernel: &Kernel<T>, bias: Option<&[T]>, g: &Geom) -> Vec<T> {
    let tiles = g.h.div_ceil(2) * g.w.div_ceil(2);
    let (in_img, out_img) = (g.c * g.h * g.w, g.o * g.h * g.w);
    let total = g.b * out_img;
    // Not zero-filled: the output transform writes every value (zeroing it first was a serial
    // pass over the whole output on the calling thread).
    let mut y: Vec<T> = Vec::with_capacity(total);
    let (nv, nm) = (XI * g.c * tiles, XI * g.o * tiles);
    let per_image = |yb: &mut [MaybeUninit<T>], xb: &[T], threads: usize| {
        // this thread's reused buffer: V then M, each written in full before it is read
        T::with_scratch(nv + nm, |buf| {
            let (v, m) = buf.split_at_mut(nv);
            image(xb, kernel, bias, g, yb, v, m, threads);
        });
    };
    let work = 2 * XI * g.b * g.o * g.c * tiles;
    let spare = &mut y.spare_capacity_mut()[..total];
    for_each_image(
        spare,
        out_img,
        x,
        in_img,
        g.b,
        num_threads(),
        work,
        per_image,
    );
    // SAFETY: the capacity is `total`; `for_each_image` gave each of the `b` images its
    // `out_img` values, and `output_transform` wrote every (o, y, x) of each (`image` hands it
    // every channel's plane).
    unsafe { y.set_len(total) };
    y
}

/// One image: input transform, the 16 GEMMs, output transform; each stage split over
/// `threads` of candle's pool (channels for the transforms, tile positions for the GEMMs).
#[allow(clippy::too_many_arguments)]
fn image<T: Float>(
    xb: &[T],
    kernel: &Kernel<T>,
    bias: Option<&[T]>,
    g: &Geom,
    yb: &mut [MaybeUninit<T>],
    v: &mut [T],
    m: &mut [T],
    threads: usize,
) {
    let tiles = g.h.div_ceil(2) * g.w.div_ceil(2);
    let (c, o) = (g.c, g.o);
    // V: channel c writes 16 strided rows, so the tasks share V's address (not expressible as
    // disjoint `&mut` chunks).
    let vp = SharedMut::new(v);
    // SAFETY (each call): `vp` addresses `v`, 16 · C · tiles initialised values (the scratch
    // buffer), borrowed until the tasks end; `channel_blocks` hands each task its own channels.
    channel_blocks(c, threads, &|r| unsafe { input_transform(xb, g, r, vp) });
    let v = &*v;
    let gemm_xi = |xi: usize, mx: &mut [T]| {
        gemm_cols(
            o,
            tiles,
            c,
            Dst::init(mx),
            false,
            kernel.lhs(xi),
            Mat::new(&v[xi * c * tiles..], tiles, 1),
            1,
        )
    };
    let (plane, work) = (o * tiles, 2 * XI * o * c * tiles);
    let m = &mut m[..XI * plane];
    if threads <= 1 {
        m.chunks_mut(plane.max(1))
            .enumerate()
            .for_each(|(xi, mx)| gemm_xi(xi, mx));
    } else {
        parallel::for_each_chunk_run(m, plane, work, |xis, run| {
            xis.zip(run.chunks_mut(plane))
                .for_each(|(xi, mx)| gemm_xi(xi, mx))
        });
    }
    let m = &*m;
    let hw = g.h * g.w;
    if threads <= 1 {
        output_transform(m, bias, g, 0..o, yb);
    } else {
        parallel::for_each_chunk_run(yb, hw, 4 * o * hw, |chs, run| {
            output_transform(m, bias, g, chs, run)
        });
    }
}

/// Runs `work` over `0..n` on this thread (`threads <= 1`), or over `pool_width()` contiguous
/// blocks on candle's pool.
fn channel_blocks(n: usize, threads: usize, work: &(dyn Fn(Range<usize>) + Sync)) {
    if threads <= 1 {
        return work(0..n);
    }
    let blocks = parallel::pool_width();
    let per = n.div_ceil(blocks);
    parallel::run_tasks(blocks, |t| {
        let r = (t * per).min(n)..((t + 1) * per).min(n);
        if !r.is_empty() {
            work(r);
        }
    });
}

#[cfg(test)]
#[path = "winograd_tests.rs"]
mod tests;
