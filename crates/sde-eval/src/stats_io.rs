//! Reference statistics on disk: our own safetensors layout, and `.npz` files with pytorch-fid's
//! keys (`mu`, `sigma`) or the reference implementation's raw features (`pool_3`).

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::{file_err, Error, Result};
use crate::frechet::GaussianStats;

/// The on-disk layouts [`GaussianStats::save`] writes and [`GaussianStats::load`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsFormat {
    /// safetensors with `mu` (f64 `[d]`), `sigma` (f64 `[d, d]`) and `n` (i64 `[1]`), written
    /// atomically.
    Safetensors,
    /// `.npz` with `mu` and `sigma` (f64), the layout of pytorch-fid's `--save-stats`
    /// (which writes it compressed; uncompressed archives are written here, and both read).
    Npz,
}

impl StatsFormat {
    /// `Npz` for a `.npz` path, `Safetensors` otherwise.
    pub fn from_path(path: &Path) -> Self {
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("npz"))
        {
            Self::Npz
        } else {
            Self::Safetensors
        }
    }
}

fn to_f64(path: &Path, name: &str, t: &Tensor) -> Result<Vec<f64>> {
    if !t.dtype().is_float() {
        return Err(file_err(
            path,
            format!("`{name}` has dtype {:?}, expected a float", t.dtype()),
        ));
    }
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
}

impl GaussianStats {
    /// Writes the statistics in `format` (see [`StatsFormat`]); `.npz` files carry no `n`.
    pub fn save(&self, path: impl AsRef<Path>, format: StatsFormat) -> Result<()> {
        let path = path.as_ref();
        let d = self.dim();
        let mu = Tensor::from_slice(&self.mu, d, &Device::Cpu)?;
        let sigma = Tensor::from_slice(&self.sigma, (d, d), &Device::Cpu)?;
        match format {
            StatsFormat::Safetensors => {
                let n = Tensor::new(&[self.n.map(|n| n as i64).unwrap_or(-1)], &Device::Cpu)?;
                let meta = [("format".to_string(), "sde-eval-stats-v1".to_string())];
                score_nets::checkpoint::save_safetensors(
                    [("mu", &mu), ("sigma", &sigma), ("n", &n)],
                    Some(meta.into_iter().collect()),
                    path,
                )?;
            }
            StatsFormat::Npz => {
                let tmp = path.with_extension(format!("npz.tmp.{}", std::process::id()));
                Tensor::write_npz(&[("mu", &mu), ("sigma", &sigma)], &tmp)?;
                std::fs::rename(&tmp, path)?;
            }
        }
        Ok(())
    }

    /// Reads statistics written by [`GaussianStats::save`], by pytorch-fid (`.npz` with `mu`
    /// and `sigma`), or an `.npz` of raw features under `pool_3` (the reference
    /// implementation's `*_stats.npz`), whose mean and covariance are computed here.
    /// A missing key, a wrong shape or a non-finite value is an error naming the file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let entries: Vec<(String, Tensor)> = match StatsFormat::from_path(path) {
            StatsFormat::Npz => crate::npz::read_npz(path)?,
            StatsFormat::Safetensors => candle_core::safetensors::load(path, &Device::Cpu)
                .map_err(|e| file_err(path, format!("not a readable safetensors file: {e}")))?
                .into_iter()
                .collect(),
        };
        let get = |k: &str| entries.iter().find(|(n, _)| n == k).map(|(_, t)| t);
        if let (Some(mu), Some(sigma)) = (get("mu"), get("sigma")) {
            let n = match get("n") {
                Some(n) => {
                    let v = n.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?;
                    v.first().and_then(|&n| u64::try_from(n).ok())
                }
                None => None,
            };
            let d = mu.elem_count();
            if sigma.dims() != [d, d] {
                return Err(file_err(
                    path,
                    format!("`sigma` has shape {:?}, `mu` has {d} entries", sigma.dims()),
                ));
            }
            return Self::new(to_f64(path, "mu", mu)?, to_f64(path, "sigma", sigma)?, n)
                .map_err(|e| file_err(path, e.to_string()));
        }
        if let Some(pool) = get("pool_3") {
            let pool = pool.to_dtype(DType::F64)?;
            return Self::from_features(&pool).map_err(|e| match e {
                Error::NonFinite { .. }
                | Error::ShapeMismatch { .. }
                | Error::NotEnoughSamples { .. } => file_err(path, format!("`pool_3`: {e}")),
                e => e,
            });
        }
        let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
        Err(file_err(
            path,
            format!("no `mu` and `sigma` (nor `pool_3`) entries; found {names:?}"),
        ))
    }
}
