#!/usr/bin/env bash
# Compile-check the workspace with the `cuda` feature on a machine with no GPU and no CUDA toolkit.
# It installs NVIDIA's compiler from the Python package registry into a cache folder (about 200 MB,
# once), points candle's build scripts at it, and runs `cargo check` (build scripts and type checks,
# no linking: the CUDA libraries are only needed to link and run, on a GPU machine).
# Then the same for sde-train's `nccl` feature (data-parallel training over NCCL, issue #16):
# cudarc's NCCL bindings are pre-generated, so no NCCL headers are needed to check, only to link.
# A copy of ../shared/tools/check-cuda.sh extended with that step, so the repository holds it.
# Usage, from the project root:  .ci/check-cuda.sh [extra cargo args]
# Takes ~10-15 minutes cold on 2 cores (candle's PTX kernels), seconds when warm.
set -euo pipefail
CACHE="${CUDA_CHECK_CACHE:-$HOME/.cache/cuda-check}"
VENV="$CACHE/venv"
# cudarc (candle 0.11's CUDA binding) supports toolkits up to 13.4: keep every piece on 13.4.
PKGS="nvidia-cuda-nvcc==13.4.92 nvidia-cuda-runtime==13.4.92 nvidia-nvvm==13.4.92 nvidia-cuda-crt==13.4.92 nvidia-cuda-cccl==13.3.5.0.6"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/pip" list 2>/dev/null | grep -q "nvidia-cuda-nvcc *13.4.92"; then
  mkdir -p "$CACHE"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q $PKGS
fi
C=$("$VENV/bin/python" -c 'import os, nvidia; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
export PATH="$C/bin:$PATH" CUDA_ROOT="$C" CUDA_PATH="$C" CUDA_TOOLKIT_ROOT_DIR="$C"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"   # H100/H200; set 80 for A100, 89 for L4/4090
nvcc --version | tail -1
members=$(cargo metadata --no-deps --format-version 1 | python3 -c '
import json, sys
m = json.load(sys.stdin)
print(" ".join(p["name"] for p in m["packages"] if "cuda" in p["features"]))')
[ -n "$members" ] || { echo "no workspace crate has a cuda feature"; exit 1; }
for p in $members; do
  echo "== cargo check -p $p --features cuda"
  cargo check -p "$p" --features cuda --all-targets "$@"
done
echo "cuda feature compiles for: $members"
echo "== cargo check -p sde-train --features nccl,mpi"
cargo check -p sde-train --features nccl,mpi --all-targets "$@"
echo "== cargo check -p sde-train --features nccl"
cargo check -p sde-train --features nccl "$@"
echo "nccl feature compiles (sde-train, with and without mpi)"
