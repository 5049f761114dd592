//! The Dormand–Prince 5(4) Butcher tableau (Dormand & Prince 1980; Hairer, Nørsett & Wanner,
//! *Solving ODEs I*, table II.5.2), the coefficients of scipy's `RK45`.
//!
//! Stages k_i = f(x + h Σ_{j<i} a_ij k_j, t + c_i h), i = 1..6; 5th-order solution
//! x_{n+1} = x_n + h Σ_i b_i k_i; with k_7 = f(x_{n+1}, t + h) (first same as last, FSAL) the
//! embedded error estimate is e = h Σ_{i=1}^{7} e_i k_i, e_i = b_i − b̂_i with b̂ the 4th-order
//! weights.

/// Number of stages of one step (the 7th, FSAL stage is the next step's first).
pub const N_STAGES: usize = 6;

/// Nodes c_i (`RK45.C`).
pub const C: [f64; N_STAGES] = [0.0, 1.0 / 5.0, 3.0 / 10.0, 4.0 / 5.0, 8.0 / 9.0, 1.0];

/// Runge–Kutta matrix a_ij, row i holds the weights of k_1..k_{i−1} (`RK45.A`).
pub const A: [[f64; 5]; N_STAGES] = [
    [0.0, 0.0, 0.0, 0.0, 0.0],
    [1.0 / 5.0, 0.0, 0.0, 0.0, 0.0],
    [3.0 / 40.0, 9.0 / 40.0, 0.0, 0.0, 0.0],
    [44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0, 0.0, 0.0],
    [
        19372.0 / 6561.0,
        -25360.0 / 2187.0,
        64448.0 / 6561.0,
        -212.0 / 729.0,
        0.0,
    ],
    [
        9017.0 / 3168.0,
        -355.0 / 33.0,
        46732.0 / 5247.0,
        49.0 / 176.0,
        -5103.0 / 18656.0,
    ],
];

/// 5th-order weights b_i (`RK45.B`); b_7 = 0.
pub const B: [f64; N_STAGES] = [
    35.0 / 384.0,
    0.0,
    500.0 / 1113.0,
    125.0 / 192.0,
    -2187.0 / 6784.0,
    11.0 / 84.0,
];

/// Error weights e_i = b_i − b̂_i over the 7 stages, FSAL stage last (`RK45.E`).
pub const E: [f64; N_STAGES + 1] = [
    -71.0 / 57600.0,
    0.0,
    71.0 / 16695.0,
    -71.0 / 1920.0,
    17253.0 / 339200.0,
    -22.0 / 525.0,
    1.0 / 40.0,
];

/// Order of the embedded error estimator (4); the step-size exponent is −1/(4 + 1).
pub const ERROR_ESTIMATOR_ORDER: i32 = 4;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_sums_equal_nodes_and_weights_sum_to_one() {
        for (i, row) in A.iter().enumerate() {
            let s: f64 = row.iter().sum();
            assert!((s - C[i]).abs() < 1e-14, "row {i}");
        }
        assert!((B.iter().sum::<f64>() - 1.0).abs() < 1e-14);
        // b̂ = b − e must also sum to one (b_7 = 0), so Σ e = 0.
        assert!(E.iter().sum::<f64>().abs() < 1e-14);
    }

    #[test]
    fn fifth_order_conditions_hold() {
        // Σ b c^{q−1} = 1/q for q = 1..5 (the quadrature conditions of a 5th-order method).
        for q in 1..=5 {
            let s: f64 = B.iter().zip(&C).map(|(b, c)| b * c.powi(q - 1)).sum();
            assert!((s - 1.0 / q as f64).abs() < 1e-13, "q = {q}: {s}");
        }
    }
}
