//! The GroupNorm kernels against plain f64 loops of the definition and central differences.

use super::*;

/// Deterministic, irregular test data in [−1.5, 2.5) (off-centre, so the means are not 0).
fn data(n: usize, seed: u64) -> Vec<f64> {
    crate::test_util::values(n, seed)
        .into_iter()
        .map(|v| 2.0 * v + 0.5)
        .collect()
}

/// The definition, one group at a time, in f64.
fn naive(x: &[f64], gamma: &[f64], beta: &[f64], sh: GnShape, eps: f64, silu: bool) -> Vec<f64> {
    let (cg, s) = (sh.channels / sh.groups, sh.spatial);
    let n = cg * s;
    let mut y = vec![0.0; x.len()];
    for bg in 0..sh.batch * sh.groups {
        let xs = &x[bg * n..(bg + 1) * n];
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
        for (k, &v) in xs.iter().enumerate() {
            let ch = (bg % sh.groups) * cg + k / s;
            let z = gamma[ch] * (v - mean) / (var + eps).sqrt() + beta[ch];
            y[bg * n + k] = if silu { z / (1.0 + (-z).exp()) } else { z };
        }
    }
    y
}

const SHAPES: [GnShape; 3] = [
    GnShape {
        batch: 2,
        channels: 6,
        groups: 3,
        spatial: 13,
    },
    GnShape {
        batch: 3,
        channels: 8,
        groups: 2,
        spatial: 49,
    },
    GnShape {
        batch: 64,
        channels: 32,
        groups: 8,
        spatial: 196,
    },
];

fn inputs(sh: GnShape) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let x: Vec<f64> = data(sh.batch * sh.channels * sh.spatial, 1)
        .iter()
        .map(|v| 3.0 * v + 2.0)
        .collect();
    let gamma = data(sh.channels, 2).iter().map(|v| 1.0 + v).collect();
    let beta = data(sh.channels, 3);
    (x, gamma, beta)
}

fn to32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&a| a as f32).collect()
}

#[test]
fn forward_matches_the_definition_in_f64_and_f32() {
    for sh in SHAPES {
        for act in [GnActivation::Identity, GnActivation::Silu] {
            let (x, gamma, beta) = inputs(sh);
            let want = naive(&x, &gamma, &beta, sh, 1e-6, act == GnActivation::Silu);
            let y = group_norm_forward(&x, &gamma, &beta, sh, 1e-6, act);
            let y32 = group_norm_forward(&to32(&x), &to32(&gamma), &to32(&beta), sh, 1e-6, act);
            for i in 0..x.len() {
                assert!((y[i] - want[i]).abs() < 1e-12, "f64 {sh:?} {act:?} at {i}");
                assert!(
                    (y32[i] as f64 - want[i]).abs() < 2e-6 * (1.0 + want[i].abs()),
                    "f32 {sh:?} {act:?} at {i}: {} vs {}",
                    y32[i],
                    want[i]
                );
            }
        }
    }
}

#[test]
fn backward_matches_central_differences() {
    let sh = SHAPES[1];
    let eps = 1e-5;
    for act in [GnActivation::Identity, GnActivation::Silu] {
        let (x, gamma, beta) = inputs(sh);
        let w = data(x.len(), 4);
        // L = Σ w·y, so dL/dy = w
        let loss = |x: &[f64], g: &[f64], b: &[f64]| -> f64 {
            let y = group_norm_forward(x, g, b, sh, eps, act);
            y.iter().zip(&w).map(|(a, b)| a * b).sum()
        };
        let out = group_norm_backward(&x, &gamma, &beta, &w, sh, eps, act, true);
        let (dx, pg) = out.split_at(x.len());
        let h = 1e-6;
        let fd = |f: &dyn Fn(f64) -> f64| (f(h) - f(-h)) / (2.0 * h);
        for i in (0..x.len()).step_by(17) {
            let num = fd(&|d| {
                let mut xp = x.clone();
                xp[i] += d;
                loss(&xp, &gamma, &beta)
            });
            assert!(
                (dx[i] - num).abs() < 1e-6 * (1.0 + num.abs()),
                "dx[{i}] {act:?}"
            );
        }
        let c = sh.channels;
        assert_eq!(pg.len(), 2 * c);
        for ch in 0..c {
            let (dg, db) = (pg[ch], pg[c + ch]);
            let ng = fd(&|d| {
                let mut g = gamma.clone();
                g[ch] += d;
                loss(&x, &g, &beta)
            });
            let nb = fd(&|d| {
                let mut b = beta.clone();
                b[ch] += d;
                loss(&x, &gamma, &b)
            });
            assert!(
                (dg - ng).abs() < 1e-6 * (1.0 + ng.abs()),
                "dgamma[{ch}] {act:?}"
            );
            assert!(
                (db - nb).abs() < 1e-6 * (1.0 + nb.abs()),
                "dbeta[{ch}] {act:?}"
            );
        }
        // without parameter gradients: the same input gradient, nothing appended
        let only = group_norm_backward(&x, &gamma, &beta, &w, sh, eps, act, false);
        assert_eq!(only.as_slice(), dx);
    }
}

#[test]
fn f32_backward_agrees_with_f64() {
    for sh in SHAPES {
        for act in [GnActivation::Identity, GnActivation::Silu] {
            let (x, gamma, beta) = inputs(sh);
            let dy = data(x.len(), 5);
            let a = group_norm_backward(&x, &gamma, &beta, &dy, sh, 1e-6, act, true);
            let b = group_norm_backward(
                &to32(&x),
                &to32(&gamma),
                &to32(&beta),
                &to32(&dy),
                sh,
                1e-6,
                act,
                true,
            );
            let scale = a.iter().fold(0f64, |m, v| m.max(v.abs()));
            for i in 0..a.len() {
                assert!(
                    (b[i] as f64 - a[i]).abs() < 2e-5 * scale,
                    "{sh:?} {act:?} at {i}: {} vs {}",
                    b[i],
                    a[i]
                );
            }
        }
    }
}

#[test]
fn every_compiled_level_gives_the_same_bits_as_portable() {
    let sh = SHAPES[1];
    let (x, gamma, beta) = inputs(sh);
    let (x, gamma, beta) = (to32(&x), to32(&gamma), to32(&beta));
    let n = x.len() / (sh.batch * sh.groups);
    let dy = to32(&data(x.len(), 6));
    for act in [GnActivation::Identity, GnActivation::Silu] {
        let y = group_norm_forward(&x, &gamma, &beta, sh, 1e-6, act);
        let dx = group_norm_backward(&x, &gamma, &beta, &dy, sh, 1e-6, act, false);
        for bg in 0..sh.batch * sh.groups {
            let grp = group(&sh, &gamma, &beta, bg % sh.groups, 1e-6, act);
            let r = bg * n..(bg + 1) * n;
            let mut yp = vec![0.0; n];
            fwd_f32(&grp, &x[r.clone()], &mut yp);
            let (mut dp, mut pg) = (vec![0.0; n], vec![0.0; 2 * gamma.len() / sh.groups]);
            bwd_f32(&grp, &x[r.clone()], &dy[r.clone()], &mut dp, &mut pg);
            assert_eq!(yp.as_slice(), &y[r.clone()], "forward {act:?}");
            assert_eq!(dp.as_slice(), &dx[r], "backward {act:?}");
        }
    }
}

#[test]
fn empty_batches_give_empty_outputs() {
    let sh = GnShape {
        batch: 0,
        channels: 4,
        groups: 2,
        spatial: 9,
    };
    let g = [1.0f32; 4];
    assert!(group_norm_forward(&[], &g, &g, sh, 1e-6, GnActivation::Silu).is_empty());
    assert!(group_norm_backward(&[], &g, &g, &[], sh, 1e-6, GnActivation::Silu, false).is_empty());
    // no samples: no input gradient, zero parameter gradients
    let out = group_norm_backward(&[], &g, &g, &[], sh, 1e-6, GnActivation::Silu, true);
    assert_eq!(out, vec![0.0; 8]);
}

#[test]
#[should_panic(expected = "6 channels in 4 groups")]
fn channels_not_divisible_by_groups_panic() {
    let sh = GnShape {
        batch: 1,
        channels: 6,
        groups: 4,
        spatial: 1,
    };
    group_norm_forward(
        &[0f32; 6],
        &[1.0; 6],
        &[0.0; 6],
        sh,
        1e-6,
        GnActivation::Identity,
    );
}
