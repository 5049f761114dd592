//! Bounds-checked matrix views over the `gemm` crate (the GEMM candle-core uses, here with its
//! AVX-512 micro-kernels enabled; they are chosen at run time).
//!
//! [`fn@gemm`] computes $D \leftarrow A B$ or $D \leftarrow D + A B$ on one thread: callers
//! parallelise over independent blocks with [`crate::parallel`], so that every product is
//! summed in the same order whatever the thread count.

/// A read-only `rows × cols` view of a slice with element $(i, j)$ at `i * rs + j * cs`.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> MatRef<'a> {
    /// A strided view. Panics if an index of the view falls outside `data`.
    pub fn new(data: &'a [f32], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        if rows > 0 && cols > 0 {
            let last = (rows - 1) * rs + (cols - 1) * cs;
            assert!(
                last < data.len(),
                "MatRef: a {rows}x{cols} view with strides ({rs}, {cs}) needs {} elements, \
                 the slice has {}",
                last + 1,
                data.len()
            );
        }
        Self {
            data,
            rows,
            cols,
            rs,
            cs,
        }
    }

    /// The row-major `rows × cols` matrix at the start of `data`.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::new(data, rows, cols, cols, 1)
    }

    /// The transpose (no copy).
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Rows `r0..r1` (no copy).
    pub fn rows(self, r0: usize, r1: usize) -> Self {
        assert!(
            r0 <= r1 && r1 <= self.rows,
            "MatRef::rows: {r0}..{r1} of {}",
            self.rows
        );
        if r0 == r1 {
            return Self { rows: 0, ..self };
        }
        Self {
            data: &self.data[r0 * self.rs..],
            rows: r1 - r0,
            ..self
        }
    }

    /// Number of rows.
    pub fn n_rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn n_cols(&self) -> usize {
        self.cols
    }
}

/// A writable row-major `rows × cols` view (row stride `cols`).
#[derive(Debug)]
pub struct MatMut<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
}

impl<'a> MatMut<'a> {
    /// The row-major `rows × cols` matrix at the start of `data`. Panics if `data` is shorter.
    pub fn row_major(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        assert!(
            data.len() >= rows * cols,
            "MatMut: a {rows}x{cols} matrix needs {} elements, the slice has {}",
            rows * cols,
            data.len()
        );
        Self { data, rows, cols }
    }
}

/// Whether [`fn@gemm`] overwrites or adds to its destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accumulate {
    /// $D \leftarrow A B$.
    Overwrite,
    /// $D \leftarrow D + A B$.
    Add,
}

/// $D \leftarrow A B$ (or $D + A B$) on the calling thread. Panics if the shapes disagree.
pub fn gemm(dst: MatMut<'_>, a: MatRef<'_>, b: MatRef<'_>, acc: Accumulate) {
    let (m, n, k) = (a.rows, b.cols, a.cols);
    assert!(
        b.rows == k && dst.rows == m && dst.cols == n,
        "gemm: [{}x{}] = [{m}x{k}] · [{}x{n}]",
        dst.rows,
        dst.cols,
        b.rows
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if acc == Accumulate::Overwrite {
            dst.data[..m * n].fill(0.0);
        }
        return;
    }
    let read_dst = acc == Accumulate::Add;
    // SAFETY: `MatRef::new` checked that every index `i * rs + j * cs` (i < rows, j < cols) of
    // `a` and `b` lies in its slice, and `MatMut::row_major` that `dst` holds `m * n` elements
    // at row stride `n`; `gemm` reads and writes exactly those elements. `dst` is a `&mut`
    // borrow, so it aliases neither operand. All strides fit in `isize` because they index
    // allocations, which are at most `isize::MAX` bytes.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr(),
            1,
            n as isize,
            read_dst,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            if read_dst { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: MatRef, b: MatRef) -> Vec<f64> {
        let mut out = vec![0.0; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                out[i * b.cols + j] = (0..a.cols)
                    .map(|l| {
                        a.data[i * a.rs + l * a.cs] as f64 * b.data[l * b.rs + j * b.cs] as f64
                    })
                    .sum();
            }
        }
        out
    }

    #[test]
    fn gemm_matches_f64_loops_for_transposed_and_strided_operands() {
        let a: Vec<f32> = (0..37 * 19)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1)
            .collect();
        let b: Vec<f32> = (0..19 * 23)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.2)
            .collect();
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let av = if ta {
                MatRef::row_major(&a, 19, 37).t()
            } else {
                MatRef::row_major(&a, 37, 19)
            };
            let bv = if tb {
                MatRef::row_major(&b, 23, 19).t()
            } else {
                MatRef::row_major(&b, 19, 23)
            };
            let want = naive(av, bv);
            let mut d = vec![1.0f32; 37 * 23];
            gemm(MatMut::row_major(&mut d, 37, 23), av, bv, Accumulate::Add);
            for (x, w) in d.iter().zip(&want) {
                assert!((*x as f64 - (w + 1.0)).abs() < 1e-4, "{x} vs {}", w + 1.0);
            }
            gemm(
                MatMut::row_major(&mut d, 37, 23),
                av,
                bv,
                Accumulate::Overwrite,
            );
            for (x, w) in d.iter().zip(&want) {
                assert!((*x as f64 - w).abs() < 1e-4);
            }
        }
    }

    #[test]
    #[should_panic(expected = "needs")]
    fn a_view_past_the_slice_is_refused() {
        let a = [0.0f32; 5];
        let _ = MatRef::row_major(&a, 2, 3);
    }
}
