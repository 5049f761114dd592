//! The kernels on their own: the fused MLP forward (B = 3000, shared and distinct labels) and
//! backward (B = 512) of the examples' network (`MlpConfig::ve(2)`: E = 64, H = 128, L = 3),
//! the vector SiLU, and GroupNorm + SiLU forward and backward on an MNIST-size activation
//! (`[64, 32, 28, 28]`, 8 groups), the float32 normals of `BlockNoise` (one block of 4096), and
//! the 2-D mixture score (8 components, 10 000 points, with and without the vjp).
//!
//! `cargo bench -p sde-kernels`

use criterion::{criterion_group, criterion_main, Criterion};
use sde_kernels::groupnorm::{group_norm_backward, group_norm_forward, GnActivation, GnShape};
use sde_kernels::mixture::{score_runs, MixtureConsts};
use sde_kernels::mlp::{backward, forward, Grads, MlpSpec, Save, TimeEmbedding};
use sde_kernels::normal::fill_block;
use sde_kernels::simd::silu_to;

fn vals(n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * scale)
        .collect()
}

fn bench(c: &mut Criterion) {
    let spec = MlpSpec {
        data_dim: 2,
        hidden: 128,
        n_layers: 3,
        embedding_dim: 64,
        time: TimeEmbedding::Fourier { log_label: true },
        scale_by_label: true,
    };
    let theta = vals(spec.n_params(), 0.1);
    let freqs = vals(32, 16.0);
    let x = vals(3000 * 2, 1.0);
    let shared = vec![1.0f32; 3000];
    let distinct: Vec<f32> = (0..3000).map(|i| 0.01 + i as f32 * 0.002).collect();
    let mut out = vec![0.0; 3000 * 2];
    c.bench_function("mlp_forward_b3000_shared_label", |b| {
        b.iter(|| forward(&spec, &theta, &freqs, &x, &shared, &mut out, Save::Nothing))
    });
    c.bench_function("mlp_forward_b3000_distinct_labels", |b| {
        b.iter(|| {
            forward(
                &spec,
                &theta,
                &freqs,
                &x,
                &distinct,
                &mut out,
                Save::Nothing,
            )
        })
    });
    let ybar = vals(512 * 2, 1.0);
    let mut g = vec![0.0; theta.len()];
    c.bench_function("mlp_backward_b512_distinct_labels", |b| {
        b.iter(|| {
            backward(
                &spec,
                &theta,
                &freqs,
                &x[..1024],
                &distinct[..512],
                &ybar,
                None,
                Grads {
                    theta: &mut g,
                    x: None,
                    labels: None,
                },
            )
        })
    });
    let mut out = vec![0.0; 1024];
    c.bench_function(
        "mlp_forward_saving_and_backward_b512_distinct_labels",
        |b| {
            b.iter(|| {
                let saved = forward(
                    &spec,
                    &theta,
                    &freqs,
                    &x[..1024],
                    &distinct[..512],
                    &mut out,
                    Save::Activations,
                );
                backward(
                    &spec,
                    &theta,
                    &freqs,
                    &x[..1024],
                    &distinct[..512],
                    &ybar,
                    saved.as_ref(),
                    Grads {
                        theta: &mut g,
                        x: None,
                        labels: None,
                    },
                )
            })
        },
    );
    let z = vals(512 * 128, 8.0);
    let mut h = vec![0.0; z.len()];
    c.bench_function("silu_512x128", |b| b.iter(|| silu_to(&z, &mut h)));
}

fn bench_group_norm(c: &mut Criterion) {
    let shape = GnShape {
        batch: 64,
        channels: 32,
        groups: 8,
        spatial: 28 * 28,
    };
    let x = vals(64 * 32 * 28 * 28, 2.0);
    let dy = vals(x.len(), 1.0);
    let (gamma, beta) = (vals(32, 1.0), vals(32, 0.5));
    let act = GnActivation::Silu;
    c.bench_function("group_norm_silu_forward_64x32x28x28", |b| {
        b.iter(|| group_norm_forward(&x, &gamma, &beta, shape, 1e-6, act))
    });
    c.bench_function("group_norm_silu_backward_64x32x28x28", |b| {
        b.iter(|| group_norm_backward(&x, &gamma, &beta, &dy, shape, 1e-6, act, true))
    });
}

fn bench_noise_and_mixture(c: &mut Criterion) {
    let mut z = vec![0.0f32; 4096];
    c.bench_function("normal_fill_block_4096", |b| {
        b.iter(|| fill_block(7, &mut z))
    });
    // the "8 Gaussians" ring at one time: a μ_k on a circle of radius 4, v = 0.2² + 1
    let (k, d, n) = (8, 2, 10_000);
    let amu: Vec<f64> = (0..k)
        .flat_map(|i| {
            let a = std::f64::consts::TAU * i as f64 / k as f64;
            [4.0 * a.cos(), 4.0 * a.sin()]
        })
        .collect();
    let consts = MixtureConsts::from_f64(d, &amu, &vec![1.0 / 1.04; k * d], &vec![-2.0; k]);
    let x = vals(n * d, 4.0);
    let probe = vals(n * d, 1.0);
    let (mut out, mut out_v) = (vec![0.0; n * d], vec![0.0; n * d]);
    let runs = [0..n];
    c.bench_function("mixture_score_2d_k8_b10000", |b| {
        b.iter(|| {
            score_runs(k, d, &x, &mut out, None, &runs, |_, c| {
                c.clone_from(&consts)
            })
        })
    });
    c.bench_function("mixture_score_vjp_2d_k8_b10000", |b| {
        b.iter(|| {
            score_runs(
                k,
                d,
                &x,
                &mut out,
                Some((&probe, &mut out_v)),
                &runs,
                |_, c| c.clone_from(&consts),
            )
        })
    });
}

criterion_group!(benches, bench, bench_group_norm, bench_noise_and_mixture);
criterion_main!(benches);
