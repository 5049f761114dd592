//! The fused kernels against an obviously-correct f64 implementation of the same equations,
//! and their gradients against central differences of it.

use super::*;

/// The network in f64 loops, straight from the module equations.
fn reference(spec: &MlpSpec, theta: &[f64], freqs: &[f32], x: &[f64], labels: &[f64]) -> Vec<f64> {
    let (d, h, e, n) = (
        spec.data_dim,
        spec.hidden,
        spec.embedding_dim,
        spec.n_layers,
    );
    let lay = spec.layout();
    let silu = |v: f64| v / (1.0 + (-v).exp());
    let affine = |w: usize, b: usize, out: usize, v: &[f64]| -> Vec<f64> {
        (0..out)
            .map(|o| {
                theta[b + o]
                    + (0..v.len())
                        .map(|k| theta[w + o * v.len() + k] * v[k])
                        .sum::<f64>()
            })
            .collect()
    };
    let mut res = Vec::new();
    for (r, &l) in labels.iter().enumerate() {
        let s = match spec.time {
            TimeEmbedding::Fourier { log_label: true } => l.ln(),
            _ => l,
        };
        let p: Vec<f64> = freqs
            .iter()
            .map(|&w| match spec.time {
                TimeEmbedding::Fourier { .. } => 2.0 * std::f64::consts::PI * w as f64 * s,
                TimeEmbedding::Positional => w as f64 * s,
            })
            .collect();
        let emb: Vec<f64> = p
            .iter()
            .map(|v| v.sin())
            .chain(p.iter().map(|v| v.cos()))
            .collect();
        assert_eq!(emb.len(), e);
        let g0: Vec<f64> = affine(lay.t0w, lay.t0b, h, &emb)
            .into_iter()
            .map(silu)
            .collect();
        let st: Vec<f64> = affine(lay.t1w, lay.t1b, h, &g0)
            .into_iter()
            .map(silu)
            .collect();
        let mut hh = affine(lay.inw, lay.inb, h, &x[r * d..(r + 1) * d]);
        for i in 0..n {
            let base = lay.layer0 + i * lay.layer_len;
            let a = affine(base, base + h * h, h, &hh);
            let t = affine(base + h * h + h, base + 2 * h * h + h, h, &st);
            hh = a.iter().zip(&t).map(|(a, t)| silu(a + t)).collect();
        }
        let out = affine(lay.outw, lay.outb, d, &hh);
        res.extend(
            out.iter()
                .map(|o| if spec.scale_by_label { o / l } else { *o }),
        );
    }
    res
}

fn specs() -> Vec<MlpSpec> {
    let base = MlpSpec {
        data_dim: 3,
        hidden: 8,
        n_layers: 2,
        embedding_dim: 6,
        time: TimeEmbedding::Fourier { log_label: true },
        scale_by_label: true,
    };
    vec![
        base,
        MlpSpec {
            time: TimeEmbedding::Positional,
            scale_by_label: false,
            ..base
        },
        MlpSpec {
            time: TimeEmbedding::Fourier { log_label: false },
            n_layers: 1,
            ..base
        },
    ]
}

/// Deterministic pseudo-random values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    crate::test_util::values(n, seed)
        .into_iter()
        .map(|v| v as f32)
        .collect()
}

struct Case {
    theta: Vec<f32>,
    freqs: Vec<f32>,
    x: Vec<f32>,
    labels: Vec<f32>,
}

fn case(spec: MlpSpec, b: usize, shared: bool, seed: u64) -> Case {
    let theta: Vec<f32> = values(spec.n_params(), seed)
        .iter()
        .map(|v| v * 0.6)
        .collect();
    let freqs: Vec<f32> = values(spec.embedding_dim / 2, seed + 1)
        .iter()
        .map(|v| v * 2.0)
        .collect();
    let x = values(b * spec.data_dim, seed + 2);
    let labels: Vec<f32> = if shared {
        vec![0.7; b]
    } else {
        values(b, seed + 3)
            .iter()
            .map(|v| 0.05 + (v + 1.0))
            .collect()
    };
    Case {
        theta,
        freqs,
        x,
        labels,
    }
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

#[test]
fn forward_matches_the_f64_reference_across_blocks_and_shared_labels() {
    for spec in specs() {
        for (b, shared) in [
            (1, false),
            (5, false),
            (300, false),
            (300, true),
            (129, true),
        ] {
            let c = case(spec, b, shared, b as u64);
            let mut out = vec![0.0; b * spec.data_dim];
            forward(
                &spec,
                &c.theta,
                &c.freqs,
                &c.x,
                &c.labels,
                &mut out,
                Save::Nothing,
            );
            let want = reference(
                &spec,
                &f64s(&c.theta),
                &c.freqs,
                &f64s(&c.x),
                &f64s(&c.labels),
            );
            for (o, w) in out.iter().zip(&want) {
                assert!(
                    (*o as f64 - w).abs() < 2e-5 * (1.0 + w.abs()),
                    "{spec:?} b {b}: {o} vs {w}"
                );
            }
        }
    }
}

#[test]
fn backward_matches_central_differences_of_the_f64_reference() {
    for spec in specs() {
        for (b, shared) in [(4, false), (200, false), (150, true)] {
            let c = case(spec, b, shared, 7 + b as u64);
            let ybar = values(b * spec.data_dim, 99);
            let (th, xs, ls) = (f64s(&c.theta), f64s(&c.x), f64s(&c.labels));
            let loss = |th: &[f64], xs: &[f64], ls: &[f64]| -> f64 {
                reference(&spec, th, &c.freqs, xs, ls)
                    .iter()
                    .zip(&ybar)
                    .map(|(a, b)| a * *b as f64)
                    .sum()
            };
            let fd = |v: &mut Vec<f64>, k: usize, f: &dyn Fn(&[f64]) -> f64| {
                let (h, v0) = (1e-6 * (1.0 + v[k].abs()), v[k]);
                v[k] = v0 + h;
                let up = f(v);
                v[k] = v0 - h;
                let dn = f(v);
                v[k] = v0;
                (up - dn) / (2.0 * h)
            };
            let mut gt = vec![0.0; c.theta.len()];
            let mut gx = vec![0.0; c.x.len()];
            let mut gl = vec![0.0; b];
            let want_dl = !shared;
            backward(
                &spec,
                &c.theta,
                &c.freqs,
                &c.x,
                &c.labels,
                &ybar,
                None,
                Grads {
                    theta: &mut gt,
                    x: Some(&mut gx),
                    labels: want_dl.then_some(&mut gl[..]),
                },
            );
            let scale: f64 = 1.0
                + (0..th.len())
                    .map(|k| (gt[k] as f64).abs())
                    .fold(0.0, f64::max);
            let mut thv = th.clone();
            for k in 0..th.len() {
                let want = fd(&mut thv, k, &|t| loss(t, &xs, &ls));
                assert!(
                    (gt[k] as f64 - want).abs() < 1e-4 * scale,
                    "{spec:?} b {b} theta[{k}]: {} vs {want}",
                    gt[k]
                );
            }
            let mut xv = xs.clone();
            for k in 0..xs.len().min(40) {
                let want = fd(&mut xv, k, &|x| loss(&th, x, &ls));
                assert!(
                    (gx[k] as f64 - want).abs() < 1e-4 * (1.0 + want.abs()),
                    "x[{k}]"
                );
            }
            if want_dl {
                let mut lv = ls.clone();
                for k in 0..b.min(40) {
                    let want = fd(&mut lv, k, &|l| loss(&th, &xs, l));
                    assert!(
                        (gl[k] as f64 - want).abs() < 2e-4 * (1.0 + want.abs()),
                        "{spec:?} label[{k}]: {} vs {want}",
                        gl[k]
                    );
                }
            }
        }
    }
}

#[test]
fn backward_is_deterministic_and_the_empty_batch_is_zero() {
    let spec = specs()[0];
    let c = case(spec, 1000, false, 3);
    let ybar = values(1000 * spec.data_dim, 5);
    let run = || {
        let mut g = vec![0.0; c.theta.len()];
        backward(
            &spec,
            &c.theta,
            &c.freqs,
            &c.x,
            &c.labels,
            &ybar,
            None,
            Grads {
                theta: &mut g,
                x: None,
                labels: None,
            },
        );
        g
    };
    assert_eq!(run(), run());
    let mut g = vec![1.0; c.theta.len()];
    backward(
        &spec,
        &c.theta,
        &c.freqs,
        &[],
        &[],
        &[],
        None,
        Grads {
            theta: &mut g,
            x: None,
            labels: None,
        },
    );
    assert!(g.iter().all(|&v| v == 0.0));
    let mut out = vec![];
    forward(&spec, &c.theta, &c.freqs, &[], &[], &mut out, Save::Nothing);
}

#[test]
fn saved_activations_give_the_recomputed_gradients_bit_for_bit() {
    for spec in specs() {
        for (b, shared) in [(300, false), (300, true), (7, true)] {
            let c = case(spec, b, shared, 11);
            let ybar = values(b * spec.data_dim, 12);
            let mut out = vec![0.0; b * spec.data_dim];
            let saved = forward(
                &spec,
                &c.theta,
                &c.freqs,
                &c.x,
                &c.labels,
                &mut out,
                Save::Activations,
            );
            assert!(saved.is_some());
            let mut out2 = vec![0.0; b * spec.data_dim];
            assert!(forward(
                &spec,
                &c.theta,
                &c.freqs,
                &c.x,
                &c.labels,
                &mut out2,
                Save::Nothing
            )
            .is_none());
            assert_eq!(out, out2);
            for with_dl in [false, true] {
                let run = |a: Option<&Activations>| {
                    let (mut gt, mut gx, mut gl) =
                        (vec![0.0; c.theta.len()], vec![0.0; c.x.len()], vec![0.0; b]);
                    backward(
                        &spec,
                        &c.theta,
                        &c.freqs,
                        &c.x,
                        &c.labels,
                        &ybar,
                        a,
                        Grads {
                            theta: &mut gt,
                            x: Some(&mut gx),
                            labels: with_dl.then_some(&mut gl[..]),
                        },
                    );
                    (gt, gx, gl)
                };
                assert_eq!(
                    run(saved.as_ref()),
                    run(None),
                    "{spec:?} b {b} shared {shared} dl {with_dl}"
                );
            }
        }
    }
}
