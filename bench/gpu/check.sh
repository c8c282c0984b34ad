#!/usr/bin/env bash
# Validates gang's GPU path on a machine with an NVIDIA GPU, in one run (issue 11, item 7):
# every CUDA kernel against its CPU twin, logistic and MLP(64) training on 2,000,000 x 32
# rows on the GPU and on the CPU (models compared, epochs timed), determinism, two ranks
# sharing the GPU through host staging, NCCL allreduce of 64 MiB at world 1; then the same
# training and allreduce in PyTorch on the same data (bench/gpu/torch_peer.py).
#
#   bench/gpu/build.sh            # here, where Rust is: bench/gpu/bin/gang-gpu-check
#   bench/gpu/check.sh [OUTDIR]   # there: needs the NVIDIA driver; NVRTC and NCCL come
#                                 # from python3's nvidia-* packages (PyTorch's)
#
# On a machine without a GPU it says "no GPU" and exits 0. Results: OUTDIR/gpu-check.json,
# OUTDIR/torch-peer.json, OUTDIR/check.log (default OUTDIR: $OUT, else ./gpu-check-out).
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${1:-${OUT:-gpu-check-out}}"
mkdir -p "$out"
bin=bench/gpu/bin/gang-gpu-check
[ -x "$bin" ] || bin=target/gpu-check/release/gang-gpu-check
if ! [ -x "$bin" ]; then
    echo "bench/gpu/bin/gang-gpu-check is missing: run bench/gpu/build.sh where Rust is, and carry bench/gpu/bin" >&2
    exit 2
fi
py=python3
# NVRTC (libnvrtc.so.13 and its builtins) and NCCL (libnccl.so.2) from NVIDIA's wheels,
# where PyTorch has them; the driver's libcuda from the system.
libs=$("$py" - <<'PY' 2>/dev/null
import glob, os, sys
try:
    import nvidia
except ImportError:
    sys.exit(0)
dirs = []
for base in list(getattr(nvidia, "__path__", [])):
    for pat in ("cu13/lib", "cuda_nvrtc/lib", "nccl/lib", "cublas/lib", "*/lib"):
        for d in glob.glob(os.path.join(base, pat)):
            if d not in dirs and glob.glob(os.path.join(d, "*.so*")):
                dirs.append(d)
print(":".join(dirs))
PY
)
[ -n "$libs" ] && export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nccl=$(tr ':' '\n' <<<"$libs" | while read -r d; do [ -f "$d/libnccl.so.2" ] && echo "$d/libnccl.so.2" && break; done)
[ -n "$nccl" ] && export GANG_NCCL_LIBRARY="${GANG_NCCL_LIBRARY:-$nccl}"
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}" | tee "$out/check.log"
command -v nvidia-smi >/dev/null && nvidia-smi -L | tee -a "$out/check.log"

export PYTHONUNBUFFERED=1
start=$(date +%s)
# shellcheck disable=SC2086 # GANG_GPU_CHECK_ARGS: extra options, split on spaces
timeout 300 "$bin" --out "$out" ${GANG_GPU_CHECK_ARGS:-} 2>&1 | tee -a "$out/check.log"
rc=${PIPESTATUS[0]}
if grep -q '^no GPU' "$out/check.log"; then
    if command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
        echo "check.sh: nvidia-smi lists a GPU but gang found none: the driver's libcuda.so.1 is not on the loader's path, or cuInit failed (above)" | tee -a "$out/check.log"
        exit 1
    fi
    exit 0
fi
if [ -f "$out/data/x.npy" ] && "$py" -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
    timeout 150 "$py" bench/gpu/torch_peer.py --data "$out/data" --out "$out/torch-peer.json" 2>&1 | tee -a "$out/check.log"
else
    echo "PyTorch with CUDA is not available: no peer figures" | tee -a "$out/check.log"
fi
# The data files are large; they are not results.
rm -rf "$out/data"
echo "check.sh: gang-gpu-check exit $rc, $(( $(date +%s) - start )) s in all" | tee -a "$out/check.log"
exit "$rc"
