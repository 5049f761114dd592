//! Deterministic test data shared by the kernels' unit tests.

/// `n` deterministic, irregular values in [−1, 1) from a 64-bit linear congruential generator
/// (Knuth's MMIX constants) started at `seed`.
pub(crate) fn values(n: usize, seed: u64) -> Vec<f64> {
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
