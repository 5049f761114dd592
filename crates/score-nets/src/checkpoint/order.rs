//! The order in which a network declares its parameters (PyTorch's `model.parameters()`).

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

use crate::error::{Error, Result};

#[derive(Default)]
struct Recorder {
    names: Arc<Mutex<Vec<(String, Shape)>>>,
}

impl SimpleBackend for Recorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut names = self
            .names
            .lock()
            .map_err(|_| candle_core::Error::Msg("parameter order: mutex poisoned".into()))?;
        if !names.iter().any(|(n, _)| n == name) {
            names.push((name.to_string(), s.clone()));
        }
        // A broadcast zero: no memory for the parameter itself.
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("parameter order: no buffer `{name}` (buffers are not parameters)")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        // Buffers (`sigmas`) are looked up with `contains_tensor` first: report none.
        false
    }
}

/// The names and shapes of a network's parameters in the order its constructor declares them,
/// which for the networks of this crate is PyTorch's `model.named_parameters()` order (the
/// order of the reference's EMA `shadow_params` list, see
/// [`load_reference_checkpoint`](super::load_reference_checkpoint)). Buffers such as `sigmas`
/// are not parameters and are not listed.
///
/// `build` receives a [`VarBuilder`] handing out zero tensors that take no memory (on the CPU,
/// `f32`); the network it builds is discarded. Remove frozen parameters (NCSN++'s Fourier `W`)
/// to get the EMA order.
///
/// ```
/// use score_nets::checkpoint::parameter_order;
/// use score_nets::{Mlp, MlpConfig};
/// let order = parameter_order(|vb| Mlp::new(&MlpConfig::vp(2), vb))?;
/// assert_eq!(order[0].0, "temb.0.weight");
/// assert_eq!(order.last().unwrap().0, "output.bias");
/// # Ok::<(), score_nets::Error>(())
/// ```
#[doc(alias = "named_parameters")]
pub fn parameter_order<M>(
    build: impl FnOnce(VarBuilder<'static>) -> Result<M>,
) -> Result<Vec<(String, Shape)>> {
    let names = Arc::new(Mutex::new(Vec::new()));
    let backend = Recorder {
        names: names.clone(),
    };
    let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, Device::Cpu);
    drop(build(vb)?);
    let out = names
        .lock()
        .map_err(|_| Error::Config("parameter order: mutex poisoned".into()))?
        .clone();
    Ok(out)
}
