//! Internal CPU kernels of scoresde-rs: fused small networks, vector math and GEMM on one
//! thread pool. **No stable API**: the workspace's crates call it; users call them.
//!
//! - [`parallel`]: the one threading policy (tasks laid out by problem size, run on candle's CPU
//!   pool, so results do not depend on the thread count).
//! - [`simd`]: vector `exp`, SiLU and SiLU′ with run-time dispatch (AVX-512, AVX2+FMA, portable).
//! - [`float`]: the element types of the generic kernels (`f32`, `f64`; sealed).
//! - [`conv`]: 2-D convolutions (forward, input, kernel and bias gradients) by per-image
//!   im2col + GEMM, the GEMM's columns or the images shared among the threads.
//! - [`winograd`]: 3x3 same convolutions by Winograd's F(2x2, 3x3) (2.25x fewer multiply-adds).
//! - [`fir`]: FIR up/down-sampling (`upfirdn2d`, separable kernels) of planes and its adjoint.
//! - [`softmax`]: softmax over rows and its backward (attention).
//! - [`groupnorm`]: GroupNorm (+ SiLU) forward and backward over `[B, C, S]` activations.
//! - [`matmul`]: bounds-checked matrix views over the `gemm` crate.
//! - [`memory`]: keep freed tensor buffers in the process (glibc's thresholds).
//! - [`mlp`]: the fused forward and backward pass of the time-conditioned MLP score network.
//! - [`normal`]: float32 standard normals, eight xoshiro128++ streams and a vectorised
//!   Box–Muller transform per block (`sde_core::noise::BlockNoise`'s kernel).
//! - [`mixture`]: the float32 Gaussian-mixture score and its vector–Jacobian product over
//!   low-dimensional points (`sde_core::analytic::FastMixtureScore`'s kernel).
//!
//! Every function here takes plain slices and checks its sizes, so the API is safe; the
//! `unsafe` blocks (calls into `gemm`, calls of `#[target_feature]` functions, disjoint writes
//! through `parallel`'s shared address, lengths of fully written outputs) each carry their
//! SAFETY argument.
#![warn(missing_docs)]

pub mod buffers;
pub mod conv;
pub mod fir;
pub mod float;
pub mod groupnorm;
pub mod matmul;
pub mod memory;
pub mod mixture;
pub mod mlp;
pub mod normal;
pub mod parallel;
pub mod simd;
pub mod softmax;
#[cfg(test)]
mod test_util;
pub mod winograd;
