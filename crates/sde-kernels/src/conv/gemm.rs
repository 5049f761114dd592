//! The GEMM of the convolutions: `gemm` over f32 / f64 operands with arbitrary strides, its
//! columns optionally split over candle's pool (one single-threaded GEMM per block), into an
//! initialised or an uninitialised destination. Crate-internal: the bounds it checks make it
//! safe to call; its one `unsafe` block is the call into `gemm`.

use std::marker::PhantomData;
use std::mem::MaybeUninit;

use crate::float::Float;
use crate::parallel::{self, SharedMut};

/// A read-only `rows × cols` operand: element $(i, j)$ at `data[i * rs + j * cs]` (the shape
/// comes with the GEMM that reads it, which checks the bounds).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mat<'a, T> {
    data: &'a [T],
    rs: usize,
    cs: usize,
}

impl<'a, T> Mat<'a, T> {
    /// The matrix with row stride `rs` and column stride `cs` at the start of `data`.
    pub(crate) fn new(data: &'a [T], rs: usize, cs: usize) -> Self {
        Self { data, rs, cs }
    }

    /// Panics unless every element of a `rows × cols` view lies in `data`.
    fn check(&self, rows: usize, cols: usize, who: &str) {
        if rows > 0 && cols > 0 {
            let last = (rows - 1) * self.rs + (cols - 1) * self.cs;
            assert!(
                last < self.data.len(),
                "gemm_cols: {who} ({rows}x{cols}, strides {}, {}) needs {} elements, has {}",
                self.rs,
                self.cs,
                last + 1,
                self.data.len()
            );
        }
    }
}

/// The destination of [`gemm_cols`]: row-major with row stride `n`, initialised (it may be read)
/// or not (it is only written).
#[derive(Debug)]
pub(crate) struct Dst<'a, T> {
    ptr: SharedMut<T>,
    len: usize,
    init: bool,
    _borrow: PhantomData<&'a mut [T]>,
}

impl<'a, T> Dst<'a, T> {
    /// An initialised destination.
    pub(crate) fn init(s: &'a mut [T]) -> Self {
        Self {
            len: s.len(),
            ptr: SharedMut::new(s),
            init: true,
            _borrow: PhantomData,
        }
    }

    /// A destination that may be uninitialised: the GEMM writes all of its `m × n` values and
    /// reads none (`read_dst` is refused).
    pub(crate) fn uninit(s: &'a mut [MaybeUninit<T>]) -> Self {
        Self {
            len: s.len(),
            ptr: SharedMut::new_uninit(s),
            init: false,
            _borrow: PhantomData,
        }
    }
}

/// `dst[m, n] = lhs[m, k] · rhs[k, n]` (plus `dst` when `read_dst`). With `threads > 1` and at
/// least 128 columns, the columns are cut into `pool_width()` blocks (multiples of 16, the
/// micro-kernel's width) and each block runs a single-threaded GEMM on candle's pool: the
/// kernels then use one thread pool (gemm's own parallelism runs on rayon's pool, whose idle
/// threads compete with candle's spinning ones on a busy machine). Must not be called with
/// `threads > 1` from inside a pool task (the pool does not nest).
///
/// Panics if an operand is too short for its shape and strides, `dst` holds fewer than `m · n`
/// values, or `read_dst` is asked of an uninitialised destination.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_cols<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    dst: Dst<'_, T>,
    read_dst: bool,
    lhs: Mat<'_, T>,
    rhs: Mat<'_, T>,
    threads: usize,
) {
    assert!(
        dst.len >= m * n,
        "gemm_cols: destination of {} values for {m}x{n}",
        dst.len
    );
    assert!(
        dst.init || !read_dst,
        "gemm_cols: read_dst on an uninitialised destination"
    );
    lhs.check(m, k, "lhs");
    rhs.check(k, n, "rhs");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // no products: D = D, or D = 0
        if !read_dst {
            for i in 0..m * n {
                // SAFETY: i < m n <= dst.len, the destination's own elements (`dst` is the only
                // access to them while it lives); `write` is valid on uninitialised memory.
                unsafe { dst.ptr.ptr().add(i).write(T::zero()) };
            }
        }
        return;
    }
    let (out, a, b) = (dst.ptr, lhs, rhs);
    let one = |c0: usize, c1: usize| {
        // SAFETY: the checks above put every element (i, j), i < m, j < n, of the destination
        // (row stride n, in its m n values), (i, l), l < k, of `a` and (l, j) of `b` inside their
        // slices; the call touches columns c0..c1 < n of `out` and `b` only (offsets
        // c0 ≤ n − 1 columns in, so inside the allocations). `out` is a `&mut` borrow held by
        // `dst` (so it aliases neither operand), and the blocks of concurrent calls are disjoint
        // column ranges: each element of `out` is written by one task and read by none other
        // (`SharedMut`'s contract). The destination is read only when `read_dst`, which needs
        // it initialised. `T` is f32 or f64 (`Float` is sealed), the types `gemm` computes with.
        // Strides index allocations, so they fit in `isize`.
        unsafe {
            gemm::gemm(
                m,
                c1 - c0,
                k,
                out.ptr().add(c0),
                1,
                n as isize,
                read_dst,
                a.data.as_ptr(),
                a.cs as isize,
                a.rs as isize,
                b.data.as_ptr().add(c0 * b.cs),
                b.cs as isize,
                b.rs as isize,
                if read_dst { T::one() } else { T::zero() },
                T::one(),
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        }
    };
    if threads <= 1 || n < 128 {
        return one(0, n);
    }
    let blocks = parallel::pool_width();
    let per = n.div_ceil(16).div_ceil(blocks) * 16;
    parallel::run_tasks(blocks, |t| {
        let (c0, c1) = ((t * per).min(n), ((t + 1) * per).min(n));
        if c0 < c1 {
            one(c0, c1);
        }
    });
}
