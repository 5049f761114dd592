//! The kernels on their own: the fused MLP forward (B = 3000, shared and distinct labels) and
//! backward (B = 512) of the examples' network (`MlpConfig::ve(2)`: E = 64, H = 128, L = 3),
//! the vector SiLU, and GroupNorm + SiLU forward and backward on an MNIST-size activation
//! (`[64, 32, 28, 28]`, 8 groups); the image networks' kernels on small DDPM++-like shapes
//! (quick settings: 10 samples, 1 s): convolutions by Winograd and by im2col + GEMM (3x3 on
//! `[8, 64, 16, 16]`, forward, input and kernel gradients; 1x1; 3x3 stride 2; Winograd
//! forward and input gradient on the MNIST preset's `[64, 16, 28, 28]`), FIR upsampling
//! and its adjoint, and the attention softmax over `[4·256, 256]` rows; the float32 normals
//! of `BlockNoise` (one block of 4096) and the 2-D mixture score (8 components, 10 000 points,
//! with and without the vjp).
//!
//! `cargo bench -p sde-kernels`

use criterion::{criterion_group, criterion_main, Criterion};
use std::time::Duration;

use sde_kernels::conv::{
    channel_sum, conv2d, conv2d_im2col, conv2d_input_grad, conv2d_kernel_grad, Conv2dGeom,
};
use sde_kernels::fir::UpFirDn;
use sde_kernels::groupnorm::{group_norm_backward, group_norm_forward, GnActivation, GnShape};
use sde_kernels::mixture::{score_runs, MixtureConsts};
use sde_kernels::mlp::{backward, forward, Grads, MlpSpec, Save, TimeEmbedding};
use sde_kernels::normal::fill_block;
use sde_kernels::simd::silu_to;
use sde_kernels::softmax::{softmax_rows, softmax_rows_backward};

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

fn bench_image_kernels(c: &mut Criterion) {
    let g3 = Conv2dGeom {
        b: 8,
        c: 64,
        h: 16,
        w: 16,
        o: 64,
        kh: 3,
        kw: 3,
        pad: 1,
        stride: 1,
    };
    let x = vals(g3.input_len(), 1.0);
    let w = vals(g3.kernel_len(), 0.1);
    let bias = vals(g3.o, 0.1);
    let gy = vals(g3.output_len(), 1.0);
    c.bench_function("conv3x3_winograd_8x64x16x16", |b| {
        b.iter(|| conv2d(&x, &w, Some(&bias), &g3))
    });
    c.bench_function("conv3x3_im2col_8x64x16x16", |b| {
        b.iter(|| conv2d_im2col(&x, &w, Some(&bias), &g3))
    });
    c.bench_function("conv3x3_input_grad_winograd_8x64x16x16", |b| {
        b.iter(|| conv2d_input_grad(&gy, &w, &g3))
    });
    c.bench_function("conv3x3_kernel_and_bias_grad_8x64x16x16", |b| {
        b.iter(|| {
            (
                conv2d_kernel_grad(&x, &gy, &g3),
                channel_sum(&gy, 8, 64, 256),
            )
        })
    });
    // the MNIST-5k preset's first level: batch 64, 16 channels, 28x28 (odd tile rows: 14)
    let gm = Conv2dGeom {
        b: 64,
        c: 16,
        h: 28,
        w: 28,
        o: 16,
        ..g3
    };
    let xm = vals(gm.input_len(), 1.0);
    let gym = vals(gm.output_len(), 1.0);
    c.bench_function("conv3x3_winograd_64x16x28x28", |b| {
        b.iter(|| conv2d(&xm, &w[..gm.kernel_len()], Some(&bias[..16]), &gm))
    });
    c.bench_function("conv3x3_im2col_64x16x28x28", |b| {
        b.iter(|| conv2d_im2col(&xm, &w[..gm.kernel_len()], Some(&bias[..16]), &gm))
    });
    c.bench_function("conv3x3_input_grad_winograd_64x16x28x28", |b| {
        b.iter(|| conv2d_input_grad(&gym, &w[..gm.kernel_len()], &gm))
    });
    let g1 = Conv2dGeom {
        kh: 1,
        kw: 1,
        pad: 0,
        ..g3
    };
    c.bench_function("conv1x1_8x64x16x16", |b| {
        b.iter(|| conv2d(&x, &w[..g1.kernel_len()], Some(&bias), &g1))
    });
    let gs = Conv2dGeom { stride: 2, ..g3 };
    c.bench_function("conv3x3_stride2_8x64x16x16", |b| {
        b.iter(|| conv2d(&x, &w, Some(&bias), &gs))
    });
    // upsample_2d with the [1, 3, 3, 1] kernel: factor 2, pads (2, 1)
    let up = UpFirDn::new(&[0.25, 0.75, 0.75, 0.25], 2, 1, (2, 1)).unwrap();
    let gy_up = vals(8 * 64 * 32 * 32, 1.0);
    c.bench_function("fir_upsample2_8x64x16x16", |b| {
        b.iter(|| up.forward(&x, 8 * 64, (16, 16)))
    });
    c.bench_function("fir_upsample2_adjoint_8x64x16x16", |b| {
        b.iter(|| up.adjoint(&gy_up, 8 * 64, (16, 16)))
    });
    let s = vals(4 * 256 * 256, 4.0);
    let dy = vals(s.len(), 1.0);
    let y = softmax_rows(&s, 256);
    c.bench_function("softmax_rows_1024x256", |b| {
        b.iter(|| softmax_rows(&s, 256))
    });
    c.bench_function("softmax_rows_backward_1024x256", |b| {
        b.iter(|| softmax_rows_backward(&y, &dy, 256))
    });
}

criterion_group!(benches, bench, bench_group_norm, bench_noise_and_mixture);
criterion_group! {
    name = image_benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = bench_image_kernels
}
criterion_main!(benches, image_benches);
