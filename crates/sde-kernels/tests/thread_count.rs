//! The threading policy's promise, checked across processes: every kernel gives bit-identical
//! results on 1, 2 and 3 threads. The pool size is fixed per process (candle reads
//! `RAYON_NUM_THREADS` once), so [`results_do_not_depend_on_the_thread_count`] reruns
//! [`kernel_results_probe`] in child processes and compares hashes of the outputs' bits.

use sde_kernels::conv::{
    channel_sum, conv2d, conv2d_im2col, conv2d_input_grad, conv2d_input_grad_im2col,
    conv2d_kernel_grad, Conv2dGeom,
};
use sde_kernels::fir::UpFirDn;
use sde_kernels::groupnorm::{group_norm_backward, group_norm_forward, GnActivation, GnShape};
use sde_kernels::mlp::{backward, forward, Grads, MlpSpec, Save, TimeEmbedding};
use sde_kernels::softmax::{softmax_rows, softmax_rows_backward};

/// Deterministic values in [−scale, scale), varied enough that summation order shows in the bits.
fn vals(n: usize, scale: f32, salt: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 7919 + salt * 104_729) % 1000) as f32 / 500.0 - 1.0) * scale + 1e-3)
        .collect()
}

/// FNV-1a over the bits of every output, in order.
struct Hash(u64);

impl Hash {
    fn add(&mut self, label: &str, v: &[f32]) {
        for b in label
            .bytes()
            .chain(v.iter().flat_map(|x| x.to_bits().to_le_bytes()))
        {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01B3);
        }
    }
}

/// Every kernel on shapes large enough to be split among threads (and one batch of 1).
fn kernel_results_hash() -> u64 {
    let mut h = Hash(0xcbf2_9ce4_8422_2325);
    for (b, stride, k) in [(12usize, 1usize, 3usize), (5, 2, 3), (1, 1, 3), (9, 1, 1)] {
        let g = Conv2dGeom {
            b,
            c: 16,
            h: 14,
            w: 14,
            o: 24,
            kh: k,
            kw: k,
            pad: k / 2,
            stride,
        };
        let x = vals(g.input_len(), 1.0, 1);
        let w = vals(g.kernel_len(), 0.2, 2);
        let bias = vals(g.o, 0.1, 3);
        let gy = vals(g.output_len(), 1.0, 4);
        let (ho, wo) = g.out_hw();
        h.add("conv2d", &conv2d(&x, &w, Some(&bias), &g));
        h.add("conv2d_im2col", &conv2d_im2col(&x, &w, Some(&bias), &g));
        h.add("input_grad", &conv2d_input_grad(&gy, &w, &g));
        h.add("input_grad_im2col", &conv2d_input_grad_im2col(&gy, &w, &g));
        h.add("kernel_grad", &conv2d_kernel_grad(&x, &gy, &g));
        h.add("bias_grad", &channel_sum(&gy, b, g.o, ho * wo));
    }
    let shape = GnShape {
        batch: 6,
        channels: 32,
        groups: 8,
        spatial: 14 * 14,
    };
    let x = vals(6 * 32 * 14 * 14, 2.0, 5);
    let dy = vals(x.len(), 1.0, 6);
    let (gamma, beta) = (vals(32, 1.0, 7), vals(32, 0.5, 8));
    let act = GnActivation::Silu;
    h.add(
        "gn",
        &group_norm_forward(&x, &gamma, &beta, shape, 1e-6, act),
    );
    h.add(
        "gn_backward",
        &group_norm_backward(&x, &gamma, &beta, &dy, shape, 1e-6, act, true),
    );
    let up = UpFirDn::new(&[0.25, 0.75, 0.75, 0.25], 2, 1, (2, 1)).expect("valid FIR");
    let planes = vals(24 * 16 * 16, 1.0, 9);
    let gy_up = vals(24 * 32 * 32, 1.0, 10);
    h.add("fir", &up.forward(&planes, 24, (16, 16)));
    h.add("fir_adjoint", &up.adjoint(&gy_up, 24, (16, 16)));
    let s = vals(512 * 64, 4.0, 11);
    let y = softmax_rows(&s, 64);
    h.add("softmax", &y);
    h.add(
        "softmax_backward",
        &softmax_rows_backward(&y, &vals(s.len(), 1.0, 12), 64),
    );
    let spec = MlpSpec {
        data_dim: 2,
        hidden: 64,
        n_layers: 3,
        embedding_dim: 32,
        time: TimeEmbedding::Fourier { log_label: true },
        scale_by_label: true,
    };
    let theta = vals(spec.n_params(), 0.1, 13);
    let freqs = vals(16, 16.0, 14);
    let n = 2000;
    let xs = vals(n * 2, 1.0, 15);
    let labels: Vec<f32> = (0..n).map(|i| 0.01 + i as f32 * 0.0005).collect();
    let mut out = vec![0.0; n * 2];
    let saved = forward(
        &spec,
        &theta,
        &freqs,
        &xs,
        &labels,
        &mut out,
        Save::Activations,
    );
    h.add("mlp_forward", &out);
    let mut gtheta = vec![0.0; theta.len()];
    let mut gx = vec![0.0; xs.len()];
    backward(
        &spec,
        &theta,
        &freqs,
        &xs,
        &labels,
        &vals(n * 2, 1.0, 16),
        saved.as_ref(),
        Grads {
            theta: &mut gtheta,
            x: Some(&mut gx),
            labels: None,
        },
    );
    h.add("mlp_theta_grad", &gtheta);
    h.add("mlp_x_grad", &gx);
    h.0
}

/// Run by [`results_do_not_depend_on_the_thread_count`] in a child process.
#[test]
#[ignore = "run by results_do_not_depend_on_the_thread_count with a set thread count"]
fn kernel_results_probe() {
    println!("HASH {:016x}", kernel_results_hash());
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let exe = std::env::current_exe().expect("test binary path");
    let hash_on = |threads: &str| {
        let out = std::process::Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "kernel_results_probe",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("RAYON_NUM_THREADS", threads)
            .env_remove("CANDLE_NUM_THREADS")
            .output()
            .expect("run the probe");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        stdout
            .lines()
            .find_map(|l| l.split("HASH ").nth(1).map(|h| h.trim().to_string()))
            .unwrap_or_else(|| panic!("no hash from the child on {threads} threads: {stdout}"))
    };
    let one = hash_on("1");
    for threads in ["2", "3"] {
        assert_eq!(
            hash_on(threads),
            one,
            "{threads} threads changed the results"
        );
    }
}
