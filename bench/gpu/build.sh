#!/usr/bin/env bash
# Builds what bench/gpu/check.sh runs on the GPU machine: gang-gpu-check, release, without
# MPI, HDF5 or Parquet (the `cuda` feature only: every CUDA library is loaded at run time),
# stripped, into bench/gpu/bin/ (git-ignored; carry it: `carry: ["bench/gpu/bin"]`).
# Its own target directory: other features would rebuild the main one.
set -euo pipefail
cd "$(dirname "$0")/../.."
CARGO_TARGET_DIR=target/gpu-check cargo build --release --no-default-features --features cuda \
    --bin gang-gpu-check
mkdir -p bench/gpu/bin
cp target/gpu-check/release/gang-gpu-check bench/gpu/bin/
strip bench/gpu/bin/gang-gpu-check
ls -la bench/gpu/bin/gang-gpu-check
