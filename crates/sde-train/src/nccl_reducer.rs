//! Data-parallel training over NCCL on CUDA GPUs (feature `nccl`): [`NcclReducer`], a
//! [`GradientReducer`] that sums every gradient and the loss in one `ncclAllReduce` per step,
//! on device, through candle's re-export of cudarc's NCCL bindings; and the exchange of the
//! NCCL unique id between ranks ([`nccl_id_via_file`], or over MPI with feature `mpi` too).
//!
//! One process per GPU: rank and world size from the launcher ([`crate::LaunchEnv`]), the GPU
//! from the local rank (`Device::new_cuda(local_rank)`).

use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle_core::cuda::CudaStorageSlice;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};

use crate::error::{Error, Result};
use crate::parallel::{buffer_dtype, GradientReducer};

/// Averages gradients over the GPUs of an NCCL communicator: ḡ = (1/R) Σ_r g_r and
/// ℓ̄ = (1/R) Σ_r ℓ_r in one `ncclAllReduce(ncclSum)` of a flat device buffer per step (f32, or
/// f64 when a gradient is f64), then a division by R, without leaving the GPU.
///
/// NCCL's ring and tree all-reduce reduce each element once and broadcast the result, so every
/// rank holds the same bits and the replicas stay identical; as with
/// `MpiReducer`, the mean differs from one GPU on the whole batch by f32 summation
/// order.
pub struct NcclReducer {
    comm: Comm,
    device: Device,
}

impl std::fmt::Debug for NcclReducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclReducer")
            .field("rank", &self.comm.rank())
            .field("world_size", &self.comm.world_size())
            .field("device", &self.device)
            .finish()
    }
}

fn nccl_err(what: &str, e: candle_core::cuda::cudarc::nccl::result::NcclError) -> Error {
    Error::Hook(format!("NCCL {what} failed: {:?}", e.0).into())
}

impl NcclReducer {
    /// Joins the communicator of `world_size` ranks identified by `id` (made by rank 0 with
    /// `Id::new()` and shared, see [`nccl_id_via_file`]) as `rank`, on `device`'s CUDA stream.
    /// Blocks until every rank has joined. `device` must be a CUDA device (else
    /// [`Error::ShapeMismatch`] naming it).
    pub fn new(device: &Device, rank: usize, world_size: usize, id: Id) -> Result<Self> {
        let cuda = device.as_cuda_device().map_err(|_| Error::ShapeMismatch {
            what: "NcclReducer device",
            expected: "a CUDA device".into(),
            got: format!("{device:?}"),
        })?;
        if rank >= world_size {
            return Err(Error::InvalidParameter {
                name: "rank",
                value: rank as f64,
                reason: "must be below the world size",
            });
        }
        let comm = Comm::from_rank(cuda.cuda_stream(), rank, world_size, id)
            .map_err(|e| nccl_err("communicator init", e))?;
        Ok(Self {
            comm,
            device: device.clone(),
        })
    }

    /// The device of this rank.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The communicator.
    pub fn comm(&self) -> &Comm {
        &self.comm
    }

    /// Sums `x` (contiguous, f32 or f64, on this rank's GPU) over all ranks.
    fn sum(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.contiguous()?
            .apply_op1_no_bwd(&AllReduceSum(&self.comm))?)
    }

    /// With feature `mpi` too: rank 0 makes the NCCL id and broadcasts it over `comm`.
    #[cfg(feature = "mpi")]
    pub fn id_via_mpi<C: mpi::topology::Communicator>(comm: &C) -> Result<Id> {
        use mpi::collective::Root;
        let mut bytes = [0u8; 128];
        if comm.rank() == 0 {
            let id = Id::new().map_err(|e| nccl_err("unique id", e))?;
            for (b, c) in bytes.iter_mut().zip(id.internal()) {
                *b = *c as u8;
            }
        }
        comm.process_at_rank(0).broadcast_into(&mut bytes[..]);
        Ok(id_from_bytes(&bytes))
    }
}

fn id_from_bytes(bytes: &[u8; 128]) -> Id {
    let mut internal = [0 as std::ffi::c_char; 128];
    for (c, b) in internal.iter_mut().zip(bytes) {
        *c = *b as std::ffi::c_char;
    }
    Id::uninit(internal)
}

/// Shares the NCCL unique id through a file on a filesystem every rank sees: rank 0 makes it
/// and writes `path` atomically (hex); the others wait up to `timeout` for the file. `path`
/// must be new for each launch (e.g. `$SLURM_JOB_ID` in its name): a file left by an earlier
/// job would hand the other ranks a stale id.
pub fn nccl_id_via_file(path: impl AsRef<Path>, rank: usize, timeout: Duration) -> Result<Id> {
    let path = path.as_ref();
    if rank == 0 {
        let id = Id::new().map_err(|e| nccl_err("unique id", e))?;
        let hex: String = id
            .internal()
            .iter()
            .map(|c| format!("{:02x}", *c as u8))
            .collect();
        crate::checkpoint::write_atomic(path, hex.as_bytes())?;
        return Ok(id);
    }
    let start = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            let s = s.trim();
            if s.len() == 256 && s.is_ascii() {
                let mut bytes = [0u8; 128];
                let ok = bytes.iter_mut().enumerate().all(|(i, b)| {
                    u8::from_str_radix(&s[2 * i..2 * i + 2], 16)
                        .map(|v| *b = v)
                        .is_ok()
                });
                if ok {
                    return Ok(id_from_bytes(&bytes));
                }
            }
            return Err(Error::Data {
                path: path.to_path_buf(),
                reason: "not an NCCL id (256 hex digits)".into(),
            });
        }
        if start.elapsed() > timeout {
            return Err(Error::io(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "rank 0 did not write the NCCL id in time",
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `ncclAllReduce(sum)` of a contiguous f32 / f64 CUDA tensor into a new one (candle's
/// custom-op route to a device buffer, as candle's multi-GPU examples do).
struct AllReduceSum<'c>(&'c Comm);

impl CustomOp1 for AllReduceSum<'_> {
    fn name(&self) -> &'static str {
        "nccl-all-reduce-sum"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("the NCCL all-reduce needs a CUDA tensor")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("the NCCL all-reduce needs a contiguous tensor")
        };
        let dev = s.device().clone();
        let err = |e: candle_core::cuda::cudarc::nccl::result::NcclError| {
            candle_core::Error::Msg(format!("ncclAllReduce failed: {:?}", e.0))
        };
        let out = match &s.slice {
            CudaStorageSlice::F32(src) => {
                let src = src.slice(start..end);
                let mut dst = dev.alloc_zeros::<f32>(end - start)?;
                self.0
                    .all_reduce(&src, &mut dst, &ReduceOp::Sum)
                    .map_err(err)?;
                CudaStorage::wrap_cuda_slice(dst, dev)
            }
            CudaStorageSlice::F64(src) => {
                let src = src.slice(start..end);
                let mut dst = dev.alloc_zeros::<f64>(end - start)?;
                self.0
                    .all_reduce(&src, &mut dst, &ReduceOp::Sum)
                    .map_err(err)?;
                CudaStorage::wrap_cuda_slice(dst, dev)
            }
            _ => candle_core::bail!("the NCCL all-reduce sums f32 or f64, got {:?}", s.dtype()),
        };
        Ok((out, l.shape().clone()))
    }
}

impl GradientReducer for NcclReducer {
    fn all_reduce(&mut self, grads: &mut [Tensor]) -> Result<()> {
        self.all_reduce_step(grads, 0.0).map(|_| ())
    }

    fn all_reduce_step(&mut self, grads: &mut [Tensor], local_loss: f64) -> Result<f64> {
        let dt = buffer_dtype(grads);
        let mut flat = Vec::with_capacity(grads.len() + 1);
        for g in grads.iter() {
            flat.push(g.flatten_all()?.to_dtype(dt)?.to_device(&self.device)?);
        }
        flat.push(Tensor::new(&[local_loss], &self.device)?.to_dtype(dt)?);
        let buf = Tensor::cat(&flat, 0)?;
        let mean = (self.sum(&buf)? / self.comm.world_size() as f64)?;
        let mut off = 0;
        for g in grads.iter_mut() {
            let n = g.elem_count();
            *g = mean
                .narrow(0, off, n)?
                .reshape(g.shape())?
                .to_dtype(g.dtype())?;
            off += n;
        }
        let loss = mean
            .narrow(0, off, 1)?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?;
        Ok(loss[0])
    }

    fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    fn rank(&self) -> usize {
        self.comm.rank()
    }

    /// NCCL has no barrier: a one-element all-reduce, then a device synchronisation.
    fn barrier(&mut self) -> Result<()> {
        let one = Tensor::new(&[1f32], &self.device)?;
        let _ = self.sum(&one)?;
        self.device.synchronize()?;
        Ok(())
    }
}
