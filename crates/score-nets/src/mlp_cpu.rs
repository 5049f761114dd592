//! The CPU float32 path of [`crate::Mlp`]: the whole network as one candle op over
//! `sde_kernels::mlp` (fused forward and backward, see there), in place of ~25 candle ops
//! forward and ~60 backward.
//!
//! The op's arguments are `x: [B, D]`, `labels: [B]` and every trained parameter concatenated
//! into one flat vector (candle's `cat` routes the flat gradient back to each `Var`). In
//! training mode the forward keeps its activations for the backward pass; in evaluation mode it
//! keeps nothing and a backward pass (a likelihood's vjp) recomputes them.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Storage, Tensor};
use sde_kernels::mlp::{self, Activations, Grads, MlpSpec, Save};

/// One application of the fused MLP (a fresh op per forward call, holding that call's
/// activations).
pub(crate) struct FusedMlp {
    pub spec: MlpSpec,
    /// The embedding frequencies `[E / 2]` (Fourier `W`, or the positional table).
    pub freqs: Vec<f32>,
    pub save: Save,
    pub saved: Mutex<Option<Activations>>,
}

/// The contiguous f32 host values of `t` (borrowed from its storage).
fn with_host<R>(t: &Tensor, what: &str, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => Ok(f(&v[a..b])),
        _ => Err(candle_core::Error::Msg(format!(
            "fused mlp: {what} must be a contiguous f32 CPU tensor"
        ))),
    }
}

fn host<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => Err(candle_core::Error::Msg(format!(
            "fused mlp: {what} must be a contiguous f32 CPU tensor"
        ))),
    }
}

impl CustomOp3 for FusedMlp {
    fn name(&self) -> &'static str {
        "fused-mlp"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, labels, theta) = (
            host(s1, l1, "x")?,
            host(s2, l2, "labels")?,
            host(s3, l3, "theta")?,
        );
        let b = labels.len();
        let mut out = vec![0.0f32; b * self.spec.data_dim];
        let kept = mlp::forward(
            &self.spec,
            theta,
            &self.freqs,
            x,
            labels,
            &mut out,
            self.save,
        );
        *self.saved.lock().unwrap_or_else(|p| p.into_inner()) = kept;
        Ok((CpuStorage::F32(out), Shape::from((b, self.spec.data_dim))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        labels: &Tensor,
        theta: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad_res.to_dtype(DType::F32)?.contiguous()?;
        let (b, d) = (labels.elem_count(), self.spec.data_dim);
        let mut g_theta = vec![0.0f32; theta.elem_count()];
        let mut g_x = x.track_op().then(|| vec![0.0f32; b * d]);
        let mut g_l = labels.track_op().then(|| vec![0.0f32; b]);
        let saved = self.saved.lock().unwrap_or_else(|p| p.into_inner()).take();
        with_host(x, "x", |xv| {
            with_host(labels, "labels", |lv| {
                with_host(theta, "theta", |tv| {
                    with_host(&grad, "the output gradient", |gv| {
                        mlp::backward(
                            &self.spec,
                            tv,
                            &self.freqs,
                            xv,
                            lv,
                            gv,
                            saved.as_ref(),
                            Grads {
                                theta: &mut g_theta,
                                x: g_x.as_deref_mut(),
                                labels: g_l.as_deref_mut(),
                            },
                        )
                    })
                })
            })
        })????;
        let dev = x.device();
        Ok((
            g_x.map(|v| Tensor::from_vec(v, (b, d), dev)).transpose()?,
            g_l.map(|v| Tensor::from_vec(v, b, dev)).transpose()?,
            Some(Tensor::from_vec(g_theta, theta.elem_count(), dev)?),
        ))
    }
}
