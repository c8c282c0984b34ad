#!/usr/bin/env bash
# Builds what bench/gpu/check.sh runs on the GPU machine: gang-gpu-check, release, without
# MPI, HDF5 or Parquet (the `cuda` feature only: every CUDA library is loaded at run time),
# stripped, into bench/gpu/bin/ (git-ignored; carry it: `carry: ["bench/gpu/bin"]`).
# Its own target directory: other features would rebuild the main one.
set -euo pipefail
cd "$(dirname "$0")/../.."
# -p gang: from the workspace root without it, the other members' use of gang's default
# features would be merged in (MPI and HDF5 would be linked).
CARGO_TARGET_DIR=target/gpu-check cargo build --release -p gang --no-default-features --features cuda \
    --bin gang-gpu-check
mkdir -p bench/gpu/bin
cp target/gpu-check/release/gang-gpu-check bench/gpu/bin/
strip bench/gpu/bin/gang-gpu-check
if readelf -d bench/gpu/bin/gang-gpu-check | grep -E 'libmpi|libhdf5'; then
    echo "bench/gpu/bin/gang-gpu-check links MPI or HDF5: it would not load on the GPU machine" >&2
    exit 1
fi
readelf -d bench/gpu/bin/gang-gpu-check | grep NEEDED
ls -la bench/gpu/bin/gang-gpu-check
