//! Internal CPU kernels of scoresde-rs: fused small networks, vector math and GEMM on one
//! thread pool. **No stable API**: the workspace's crates call it; users call them.
//!
//! - [`parallel`]: the one threading policy (tasks laid out by problem size, run on candle's CPU
//!   pool, so results do not depend on the thread count).
//! - [`simd`]: vector `exp`, SiLU and SiLU′ with run-time dispatch (AVX-512, AVX2+FMA, portable).
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
//! `unsafe` blocks (calls into `gemm`, calls of `#[target_feature]` functions) each carry
//! their SAFETY argument.
#![warn(missing_docs)]

pub mod buffers;
pub mod groupnorm;
pub mod matmul;
pub mod memory;
pub mod mixture;
pub mod mlp;
pub mod normal;
pub mod parallel;
pub mod simd;
