//! The element types of the generic kernels ([`crate::conv`], [`crate::winograd`],
//! [`crate::fir`], [`crate::softmax`]): `f32` and `f64`, and nothing else (the trait is sealed),
//! so that kernels may hand their operands to `gemm`, whose SAFETY arguments need one of the
//! two.

use std::ops::{AddAssign, MulAssign, SubAssign};

mod private {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// `f32` or `f64`: IEEE arithmetic ([`num_traits::Float`]), compound assignment, and the
/// conversions the kernels use. Implemented for those two types only.
pub trait Float:
    num_traits::Float
    + AddAssign
    + SubAssign
    + MulAssign
    + Default
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
    + private::Sealed
{
    /// `v` rounded to `Self` (`v as f32` / `v`).
    fn from_f64(v: f64) -> Self;
    /// `self` widened to `f64` (exact).
    fn as_f64(self) -> f64;
    /// Runs `f` with this thread's scratch buffer of this type, at least `len` long (contents
    /// unspecified): one buffer per thread and type, kept between calls, so a kernel called in
    /// a loop does not zero-fill and fault in fresh pages each time.
    ///
    /// Panics if called again from inside `f` on the same thread.
    fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R;
}

thread_local! {
    static SCRATCH_F32: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    static SCRATCH_F64: std::cell::RefCell<Vec<f64>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn scratch<T: Copy + Default, R>(
    key: &'static std::thread::LocalKey<std::cell::RefCell<Vec<T>>>,
    len: usize,
    f: impl FnOnce(&mut [T]) -> R,
) -> R {
    key.with(|c| {
        let mut c = c
            .try_borrow_mut()
            .expect("Float::with_scratch: nested use on one thread");
        if c.len() < len {
            c.resize(len, T::default());
        }
        f(&mut c[..len])
    })
}

impl Float for f32 {
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn as_f64(self) -> f64 {
        self as f64
    }
    fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R {
        scratch(&SCRATCH_F32, len, f)
    }
}

impl Float for f64 {
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn as_f64(self) -> f64 {
        self
    }
    fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R {
        scratch(&SCRATCH_F64, len, f)
    }
}

#[cfg(test)]
mod tests {
    use super::Float;

    #[test]
    fn scratch_is_reused_and_long_enough() {
        let p = f32::with_scratch(1000, |s| {
            assert_eq!(s.len(), 1000);
            s[999] = 7.0;
            s.as_ptr()
        });
        // a shorter request reuses the same buffer on this thread
        let q = f32::with_scratch(10, |s| s.as_ptr());
        assert_eq!(p, q);
        f64::with_scratch(0, |s| assert!(s.is_empty()));
    }
}
