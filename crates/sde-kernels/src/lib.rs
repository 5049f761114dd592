//! Internal CPU kernels of scoresde-rs: fused small networks, vector math and GEMM on one
//! thread pool. **No stable API**: the workspace's crates call it; users call them.
//!
//! - [`parallel`]: the one threading policy (tasks laid out by problem size, run on candle's CPU
//!   pool, so results do not depend on the thread count).
//! - [`simd`]: vector `exp`, SiLU and SiLU′ with run-time dispatch (AVX-512, AVX2+FMA, portable).
//! - [`matmul`]: bounds-checked matrix views over the `gemm` crate.
//! - [`mlp`]: the fused forward and backward pass of the time-conditioned MLP score network.
//!
//! Every function here takes plain slices and checks its sizes, so the API is safe; the
//! `unsafe` blocks (calls into `gemm`, calls of `#[target_feature]` functions) each carry
//! their SAFETY argument.
#![warn(missing_docs)]

pub mod buffers;
pub mod matmul;
pub mod mlp;
pub mod parallel;
pub mod simd;
