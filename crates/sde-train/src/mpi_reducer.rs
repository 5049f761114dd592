//! Data-parallel training over MPI (feature `mpi`): [`MpiReducer`], a [`GradientReducer`] over
//! a communicator of the system MPI (Open MPI, MPICH, Intel MPI), through the `mpi` crate.

use candle_core::{DType, Device, Tensor};
use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::datatype::PartitionMut;
use mpi::topology::{Communicator, SimpleCommunicator};

use crate::error::{Error, Result};
use crate::parallel::{buffer_dtype, GradientReducer};

/// Averages gradients over the ranks of an MPI communicator: every gradient and the local loss
/// are packed into one flat host buffer (f32, or f64 when a gradient is f64), summed on rank 0
/// (`MPI_Reduce` with `MPI_SUM`) and broadcast back (`MPI_Bcast`), then divided by R:
/// ḡ = (1/R) Σ_r g_r, ℓ̄ = (1/R) Σ_r ℓ_r.
///
/// Why reduce + broadcast and not `MPI_Allreduce`: the standard only *advises* that an
/// all-reduce give every rank the same bits, and some algorithms (recursive halving on a world
/// size that is not a power of two) add in a different order on different ranks. With one sum
/// on rank 0 sent to all, the replicas are bit-identical by construction, and the sum's order
/// is fixed for a given world size, so resuming with the same world size is exact. The cost is
/// one more latency per step (an all-reduce is a reduce-scatter and an all-gather anyway).
///
/// ```no_run
/// let universe = sde_train::mpi::initialize().expect("MPI initialises once");
/// let reducer = sde_train::MpiReducer::new(universe.world());
/// println!("rank {} of {}", reducer.rank(), reducer.world_size());
/// # use sde_train::GradientReducer;
/// ```
pub struct MpiReducer {
    comm: SimpleCommunicator,
}

impl std::fmt::Debug for MpiReducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiReducer")
            .field("rank", &self.comm.rank())
            .field("world_size", &self.comm.size())
            .finish()
    }
}

/// Host copy of `grads` and `extra` as one flat vector of `T`.
fn pack<T: candle_core::WithDType>(grads: &[Tensor], extra: f64, dt: DType) -> Result<Vec<T>> {
    let n: usize = grads.iter().map(|g| g.elem_count()).sum();
    let mut flat = Vec::with_capacity(n + 1);
    for g in grads {
        let g = g.flatten_all()?.to_dtype(dt)?.to_device(&Device::Cpu)?;
        flat.extend(g.to_vec1::<T>()?);
    }
    flat.push(T::from_f64(extra));
    Ok(flat)
}

/// Splits `flat` (divided by `world`) back into tensors shaped, typed and placed like `grads`;
/// returns the last value (the reduced extra).
fn unpack<T: candle_core::WithDType>(
    flat: Vec<T>,
    grads: &mut [Tensor],
    world: f64,
) -> Result<f64> {
    let n = flat.len();
    let all = Tensor::from_vec(flat, n, &Device::Cpu)?;
    let all = (all.to_dtype(DType::F64)? / world)?;
    let mut off = 0;
    for g in grads.iter_mut() {
        let n = g.elem_count();
        *g = all
            .narrow(0, off, n)?
            .to_dtype(g.dtype())?
            .reshape(g.shape())?
            .to_device(g.device())?;
        off += n;
    }
    Ok(all.narrow(0, off, 1)?.to_vec1::<f64>()?[0])
}

impl MpiReducer {
    /// The reducer over `comm` (usually `universe.world()`).
    pub fn new(comm: SimpleCommunicator) -> Self {
        Self { comm }
    }

    /// The communicator.
    pub fn comm(&self) -> &SimpleCommunicator {
        &self.comm
    }

    /// Ends every rank of the job with `code` (`MPI_Abort`). A rank that hits an error must
    /// call this rather than return alone: the others would wait in the next collective.
    pub fn abort(&self, code: i32) -> ! {
        self.comm.abort(code)
    }

    fn sum_into_all<T>(&self, buf: &mut [T]) -> Result<()>
    where
        T: mpi::datatype::Equivalence + Copy + Default,
    {
        let root = self.comm.process_at_rank(0);
        if self.comm.rank() == 0 {
            let mut out = vec![T::default(); buf.len()];
            root.reduce_into_root(&buf[..], &mut out[..], SystemOperation::sum());
            buf.copy_from_slice(&out);
        } else {
            root.reduce_into(&buf[..], SystemOperation::sum());
        }
        root.broadcast_into(buf);
        Ok(())
    }

    /// Concatenates every rank's `x: [n_r, ...]` (same trailing shape and dtype on every rank;
    /// n_r may differ, 0 included) on rank 0 in rank order: `Some([Σ n_r, ...])` there, `None`
    /// on the other ranks. Collective: every rank must call it.
    pub fn gather_rows(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let dims = x.dims().to_vec();
        let Some((&rows, rest)) = dims.split_first() else {
            return Err(Error::ShapeMismatch {
                what: "MpiReducer::gather_rows input",
                expected: "[n, ...] (rank ≥ 1)".into(),
                got: format!("{dims:?}"),
            });
        };
        let per: usize = rest.iter().product();
        let world = self.comm.size() as usize;
        // Row counts and the row size of every rank, so a mismatched trailing shape is an
        // error on rank 0 instead of a garbled tensor.
        let mine = [rows as u64, per as u64];
        let mut all = vec![0u64; 2 * world];
        self.comm.all_gather_into(&mine[..], &mut all[..]);
        if all.chunks(2).any(|c| c[1] != per as u64) {
            return Err(Error::ShapeMismatch {
                what: "MpiReducer::gather_rows row size across ranks",
                expected: format!("{per} values per row on every rank"),
                got: format!("{:?}", all.chunks(2).map(|c| c[1]).collect::<Vec<_>>()),
            });
        }
        let counts: Vec<i32> = all.chunks(2).map(|c| (c[0] * c[1]) as i32).collect();
        let send: Vec<f64> = x.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let root = self.comm.process_at_rank(0);
        if self.comm.rank() != 0 {
            root.gather_varcount_into(&send[..]);
            return Ok(None);
        }
        let displs: Vec<i32> = counts
            .iter()
            .scan(0i32, |acc, &c| {
                let d = *acc;
                *acc += c;
                Some(d)
            })
            .collect();
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        let mut recv = vec![0f64; total];
        {
            let mut part = PartitionMut::new(&mut recv[..], &counts[..], &displs[..]);
            root.gather_varcount_into_root(&send[..], &mut part);
        }
        let mut shape = dims.clone();
        shape[0] = total / per.max(1);
        Ok(Some(
            Tensor::from_vec(recv, shape, &Device::Cpu)?
                .to_dtype(x.dtype())?
                .to_device(x.device())?,
        ))
    }
}

impl GradientReducer for MpiReducer {
    fn all_reduce(&mut self, grads: &mut [Tensor]) -> Result<()> {
        self.all_reduce_step(grads, 0.0).map(|_| ())
    }

    fn all_reduce_step(&mut self, grads: &mut [Tensor], local_loss: f64) -> Result<f64> {
        let world = self.comm.size() as f64;
        match buffer_dtype(grads) {
            DType::F64 => {
                let mut flat = pack::<f64>(grads, local_loss, DType::F64)?;
                self.sum_into_all(&mut flat)?;
                unpack(flat, grads, world)
            }
            _ => {
                let mut flat = pack::<f32>(grads, local_loss, DType::F32)?;
                self.sum_into_all(&mut flat)?;
                unpack(flat, grads, world)
            }
        }
    }

    fn world_size(&self) -> usize {
        self.comm.size() as usize
    }

    fn rank(&self) -> usize {
        self.comm.rank() as usize
    }

    fn barrier(&mut self) -> Result<()> {
        self.comm.barrier();
        Ok(())
    }
}
