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
//! halvings of G), so the result differs from the direct sum by a few float rounding steps; the
//! parity tests against the reference hold with it.
//!
//! The input gradient of such a convolution is the same convolution of the output gradient with
//! the kernel flipped and its channels swapped, so it takes the same path.

use candle_core::WithDType;

use super::conv_cpu::{for_each_image_ptr, gemm_cols, num_threads, with_cols, Geom, SyncPtr};

/// Tile positions of F(2x2, 3x3): 4x4.
const XI: usize = 16;

/// Whether `g` is a convolution this path computes, and worth it: 3x3, stride 1, padding 1,
/// and at least 16 output tiles per image (8x8 pixels; on smaller images the 16 GEMMs are
/// too thin to beat one im2col GEMM).
pub(crate) fn applies(g: &Geom) -> bool {
    g.kh == 3 && g.kw == 3 && g.stride == 1 && g.pad == 1 && g.h.div_ceil(2) * g.w.div_ceil(2) >= 16
}

/// The 16 x 9 matrix of g ↦ G g Gᵀ on row-major 3x3 kernels: U_ξ = Σ_k K[ξ, k] g_k, with
/// ξ = 4 i + j and k = 3 r + s, K[ξ, k] = G[i, r] G[j, s].
fn kernel_matrix<T: WithDType>() -> [T; XI * 9] {
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
/// U[16, O·C] = K[16, 9] · W[O·C, 9]ᵀ (split over candle's pool like the convolutions' GEMMs).
fn kernel_transform<T: WithDType>(w: &[T], o: usize, c: usize) -> Vec<T> {
    let n = o * c;
    let k = kernel_matrix::<T>();
    // Not zero-filled (a serial pass of up to 16 O C values): the GEMM, which does not read its
    // destination here, writes every value.
    let mut u: Vec<T> = Vec::with_capacity(XI * n);
    let threads = num_threads();
    // SAFETY: u has room for 16 x n row-major values, k is 16 x 9 row-major, w read as the
    // 9 x n matrix with row stride 1 and column stride 9 (w holds n kernels of 9 values); T is
    // f32 or f64. After the GEMM every value of u is written, so the length can be set.
    unsafe {
        gemm_cols(
            XI,
            n,
            9,
            u.as_mut_ptr(),
            false,
            (k.as_ptr(), 9, 1),
            (w.as_ptr(), 1, 9),
            threads,
        );
        u.set_len(XI * n);
    }
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

impl<T: WithDType> Kernel<T> {
    /// (pointer, row stride, column stride) of the left operand of GEMM ξ.
    fn lhs(&self, xi: usize) -> (*const T, isize, isize) {
        const Q: [usize; 4] = [3, 1, 2, 0];
        let plane = self.o * self.c;
        if self.flipped {
            let xi = Q[xi / 4] * 4 + Q[xi % 4];
            (self.u[xi * plane..].as_ptr(), 1, self.c as isize)
        } else {
            (self.u[xi * plane..].as_ptr(), self.c as isize, 1)
        }
    }
}

/// V_ξ = (Bᵀ d B)_ξ for the tiles of channels `c0..c1` of one image `x: [C, H, W]` into
/// `v: [16, C, tiles]` (`v` addressed through a shared pointer: the channel ranges of
/// concurrent callers are disjoint). One row of tiles at a time, every step a loop over the
/// row's tiles (vectorised).
fn input_transform<T: WithDType>(
    x: &[T],
    g: &Geom,
    channels: std::ops::Range<usize>,
    v: SyncPtr<T>,
) {
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
                // SAFETY: the four rows (i·4 + j, ci, ty·tw .. ty·tw + tw) are in bounds of
                // [16, C, tiles] and channel ci belongs to this caller only.
                let row = |j: usize| unsafe {
                    std::slice::from_raw_parts_mut(
                        v.ptr().add(((i * 4 + j) * g.c + ci) * tiles + ty * tw),
                        tw,
                    )
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

/// Y = Aᵀ M A (+ bias) for output channels `o0..o1` of one image, from `m: [16, O, tiles]`
/// into `y: [O, H, W]` (shared pointer, disjoint channel ranges). One row of tiles at a time.
fn output_transform<T: WithDType>(
    m: &[T],
    bias: Option<&[T]>,
    g: &Geom,
    channels: std::ops::Range<usize>,
    y: SyncPtr<T>,
) {
    let (th, tw) = (g.h.div_ceil(2), g.w.div_ceil(2));
    let tiles = th * tw;
    // Aᵀ M for a row of tiles: two rows of four values per tile, lane-wise
    let mut r = vec![T::zero(); 8 * tw];
    for oc in channels {
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
                // Raw writes: the output may be uninitialised memory (`conv3x3`).
                // SAFETY: row (oc, yy) is in bounds of [O, H, W] and channel oc is this caller's;
                // 2 tx + 1 < W for tx < W / 2, and the odd last column is W − 1.
                unsafe {
                    let out = y.ptr().add((oc * g.h + yy) * g.w);
                    for tx in 0..g.w / 2 {
                        out.add(2 * tx).write(q0[tx] + q1[tx] + q2[tx] + b);
                        out.add(2 * tx + 1).write(q1[tx] - q2[tx] - q3[tx] + b);
                    }
                    if g.w % 2 == 1 {
                        let tx = tw - 1;
                        out.add(g.w - 1).write(q0[tx] + q1[tx] + q2[tx] + b);
                    }
                }
            }
        }
    }
}

/// `y = conv(x, w) + bias` for `g` with [`applies`]`(g)`: `x: [B, C, H, W]`, `w: [O, C, 3, 3]`,
/// `bias: [O]` → `y: [B, O, H, W]`.
pub(crate) fn conv3x3<T: WithDType>(x: &[T], w: &[T], bias: Option<&[T]>, g: &Geom) -> Vec<T> {
    let kernel = Kernel {
        u: kernel_transform(w, g.o, g.c),
        o: g.o,
        c: g.c,
        flipped: false,
    };
    run(x, &kernel, bias, g)
}

/// The convolution of `x` with a transformed kernel, for geometry `g`.
fn run<T: WithDType>(x: &[T], kernel: &Kernel<T>, bias: Option<&[T]>, g: &Geom) -> Vec<T> {
    debug_assert!(applies(g));
    let tiles = g.h.div_ceil(2) * g.w.div_ceil(2);
    let (in_img, out_img) = (g.c * g.h * g.w, g.o * g.h * g.w);
    let total = g.b * out_img;
    // Not zero-filled: the output transform writes every value (zeroing it first was a serial
    // pass over the whole output on the calling thread).
    let mut y: Vec<T> = Vec::with_capacity(total);
    let threads = num_threads();
    let (nv, nm) = (XI * g.c * tiles, XI * g.o * tiles);
    let per_image = |yb: SyncPtr<T>, xb: &[T], threads: usize| {
        // this thread's reused buffer: V then M, each written in full before it is read
        with_cols(nv + nm, |buf: &mut [T]| {
            let (v, m) = buf.split_at_mut(nv);
            image(xb, kernel, bias, g, yb, v, m, threads);
        });
    };
    for_each_image_ptr(
        SyncPtr(y.as_mut_ptr()),
        out_img,
        x,
        in_img,
        g.b,
        threads,
        per_image,
    );
    // SAFETY: the capacity is `total`, and `output_transform` wrote every (o, y, x) of every
    // image.
    unsafe { y.set_len(total) };
    y
}

/// One image: input transform, the 16 GEMMs, output transform; each stage split over
/// `threads` of candle's pool (channels for the transforms, tile positions for the GEMMs).
#[allow(clippy::too_many_arguments)]
fn image<T: WithDType>(
    xb: &[T],
    kernel: &Kernel<T>,
    bias: Option<&[T]>,
    g: &Geom,
    yp: SyncPtr<T>,
    v: &mut [T],
    m: &mut [T],
    threads: usize,
) {
    let tiles = g.h.div_ceil(2) * g.w.div_ceil(2);
    let (c, o) = (g.c, g.o);
    let vp = SyncPtr(v.as_mut_ptr());
    let mp = SyncPtr(m.as_mut_ptr());
    let split = |n: usize, work: &(dyn Fn(std::ops::Range<usize>) + Sync)| {
        if threads <= 1 {
            work(0..n);
        } else {
            let pool = candle_core::utils::barrier_pool();
            let blocks = pool.n_workers() + 1;
            let per = n.div_ceil(blocks);
            pool.execute_chunked(blocks, |range| {
                for t in range {
                    let r = (t * per).min(n)..((t + 1) * per).min(n);
                    if !r.is_empty() {
                        work(r);
                    }
                }
            });
        }
    };
    split(c, &|r| input_transform(xb, g, r, vp));
    split(XI, &|r| {
        for xi in r {
            // SAFETY: M_ξ is O x tiles, U_ξ O x C, V_ξ C x tiles, row-major and in bounds; each ξ
            // writes its own M_ξ; T is f32 or f64.
            unsafe {
                gemm_cols(
                    o,
                    tiles,
                    c,
                    mp.ptr().add(xi * o * tiles),
                    false,
                    kernel.lhs(xi),
                    (vp.ptr().add(xi * c * tiles), tiles as isize, 1),
                    1,
                )
            }
        }
    });
    let m = &*m;
    split(o, &|r| output_transform(m, bias, g, r, yp));
}

/// The input gradient of a convolution with [`applies`]`(g)`: `gy: [B, O, H, W]`,
/// `w: [O, C, 3, 3]` → `gx: [B, C, H, W]` = conv(gy, w̃) with w̃[c, o, u, v] = w[o, c, 2−u, 2−v].
pub(crate) fn conv3x3_input_grad<T: WithDType>(gy: &[T], w: &[T], g: &Geom) -> Vec<T> {
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

#[cfg(test)]
mod tests {
    use super::super::conv_cpu::{conv2d_gemm, conv2d_input_grad_gemm};
    use super::*;

    /// Deterministic values in [−1, 1).
    fn values(n: usize, seed: u64) -> Vec<f64> {
        let mut z = seed;
        (0..n)
            .map(|_| {
                z = z
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
            })
            .collect()
    }

    fn check<T: WithDType>(g: Geom, tol: f64) {
        let x: Vec<T> = values(g.b * g.c * g.h * g.w, 1)
            .into_iter()
            .map(T::from_f64)
            .collect();
        let w: Vec<T> = values(g.o * g.c * 9, 2)
            .into_iter()
            .map(T::from_f64)
            .collect();
        let bias: Vec<T> = values(g.o, 3).into_iter().map(T::from_f64).collect();
        assert!(applies(&g), "{g:?}");
        let worst = |a: &[T], b: &[T]| {
            assert_eq!(a.len(), b.len());
            let scale = b.iter().fold(0.0f64, |m, v| m.max(v.to_f64().abs()));
            a.iter()
                .zip(b)
                .map(|(p, q)| (p.to_f64() - q.to_f64()).abs())
                .fold(0.0, f64::max)
                / scale
        };
        for bias in [None, Some(&bias[..])] {
            let fast = conv3x3(&x, &w, bias, &g);
            let direct = conv2d_gemm(&x, &w, bias, &g);
            let e = worst(&fast, &direct);
            assert!(e < tol, "{g:?} forward: {e}");
        }
        let gy: Vec<T> = values(g.b * g.o * g.h * g.w, 4)
            .into_iter()
            .map(T::from_f64)
            .collect();
        let fast = conv3x3_input_grad(&gy, &w, &g);
        let direct = conv2d_input_grad_gemm(&gy, &w, &g);
        let e = worst(&fast, &direct);
        assert!(e < tol, "{g:?} input gradient: {e}");
    }

    fn geom(b: usize, c: usize, h: usize, w: usize, o: usize) -> Geom {
        Geom {
            b,
            c,
            h,
            w,
            o,
            kh: 3,
            kw: 3,
            pad: 1,
            stride: 1,
        }
    }

    /// Winograd and im2col + GEMM agree, on even and odd sizes, one and several images (the
    /// several-image path runs one image per thread), float32 to a few ulps of the output scale
    /// and float64 to 1e-13.
    #[test]
    fn winograd_matches_im2col() {
        for g in [
            geom(1, 3, 8, 8, 5),
            geom(2, 4, 9, 7, 3),
            geom(3, 16, 16, 16, 8),
            geom(1, 1, 11, 13, 1),
            geom(4, 8, 8, 10, 8),
        ] {
            check::<f32>(g, 2e-6);
            check::<f64>(g, 1e-13);
        }
        assert!(
            !applies(&geom(1, 4, 4, 4, 4)),
            "4x4 images take the GEMM path"
        );
        assert!(!applies(&Geom {
            stride: 2,
            ..geom(1, 4, 16, 16, 4)
        }));
    }
}
