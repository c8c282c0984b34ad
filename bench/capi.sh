#!/usr/bin/env bash
# libgang's benchmarks, against the release build installed by cargo-c
# (./dev capi install bench/build/libgang, done here):
#
#  1. checkpoint of a 1 GiB field (1 rank of 1 GiB; 2 ranks of 512 MiB) with
#     gang_checkpoint beside a plain sequential write of the same bytes with fsync, to the
#     same directory (bench/c/capi_bench.c);
#  2. one trainer pass over 65,536 x 32 floats fed through the Arrow C Data Interface
#     (FixedSizeList, in place), a plain row-major pointer, and an Arrow struct of columns
#     (one copy), beside a memcpy of the features;
#  3. one heat2d time step (examples/c/heat2d.c, 1024 x 1024, 2 ranks) with gang
#     initialized and reporting every step but not training, writing or checkpointing,
#     beside the stencil alone (--no-gang).
#
#   bench/capi.sh [ROUNDS] [DIR]      (defaults: 5 rounds; bench/build/capi-scratch, which
#                                      must be on the disk to measure)
# Writes bench/results/capi.md and prints it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-5}"
DIR="${2:-$PWD/bench/build/capi-scratch}"
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
export OMPI_MCA_mpi_yield_when_idle=1

PREFIX="$PWD/bench/build/libgang"
./dev capi install "$PREFIX" >/dev/null
cargo build --release -q -p gang-launcher
GANG="$PWD/target/release/gang"
export PKG_CONFIG_PATH="$PREFIX/lib/pkgconfig"
LIBS=($(pkg-config --cflags --libs gang) "-Wl,-rpath,$PREFIX/lib")
mkdir -p bench/build bench/results
mpicc -std=c99 -O2 bench/c/capi_bench.c "${LIBS[@]}" -o bench/build/capi_bench
mpicc -std=c99 -O2 examples/c/heat2d.c "${LIBS[@]}" -o bench/build/heat2d

val() { awk -v k="$1" '$1 == "RESULT" && $2 == k {print $3}' "$2"; }
results=()
for spec in "1 1024" "2 512"; do
    set -- $spec
    rm -rf "$DIR"
    mkdir -p "$DIR"
    echo "capi_bench: $1 rank(s) x $2 MiB" >&2
    "$GANG" run -n "$1" --no-tag-output --run-dir bench/build/runs -- \
        bench/build/capi_bench "$DIR" "$2" "$ROUNDS" >"bench/build/capi-$1.out"
    results+=("bench/build/capi-$1.out")
done
rm -rf "$DIR"

# heat2d: the best of ROUNDS runs of each, alternating.
best_nogang="" best_gang=""
for r in $(seq "$ROUNDS"); do
    echo "heat2d round $r/$ROUNDS" >&2
    for mode in nogang gang; do
        args=(--n 1024 --steps 200 --time --out "$DIR/heat2d")
        if [ "$mode" = nogang ]; then args+=(--no-gang); else args+=(--train-every 1000000 --snapshot-every 1000000 --checkpoint-every 1000000); fi
        rm -rf "$DIR/heat2d"
        us=$("$GANG" run -n 2 --no-tag-output --run-dir bench/build/runs -- bench/build/heat2d "${args[@]}" | awk '/us per step/ {print $2}')
        if [ "$mode" = nogang ]; then
            best_nogang=$(awk -v a="$best_nogang" -v b="$us" 'BEGIN{print (a == "" || b < a) ? b : a}')
        else
            best_gang=$(awk -v a="$best_gang" -v b="$us" 'BEGIN{print (a == "" || b < a) ? b : a}')
        fi
    done
done
rm -rf "$DIR"

{
    echo "Machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(nproc) cores; disk of $(df -P "$PWD/bench/build" | awk 'NR==2 {print $1}'); $(date -u +%Y-%m-%d)"
    echo "libgang release build (cargo cinstall --release), $(mpirun --version | head -1); median of $ROUNDS"
    echo
    echo "| checkpoint of a 1 GiB field | gang_checkpoint | limit: write + fsync of the same bytes | gang / limit (throughput) |"
    echo "|---|---|---|---|"
    for f in "${results[@]}"; do
        n=$(val ranks "$f"); b=$(val field_bytes_per_rank "$f"); c=$(val checkpoint_s "$f"); p=$(val plain_write_fsync_s "$f")
        awk -v n="$n" -v b="$b" -v c="$c" -v p="$p" 'BEGIN{tot=n*b/1e9; printf "| %d rank(s) x %d MiB | %.3f s (%.2f GB/s) | %.3f s (%.2f GB/s) | %.0f%% |\n", n, b/1048576, c, tot/c, p, tot/p, 100*p/c}'
    done
    echo
    echo "| one trainer pass, 65,536 x 32 f32 rows per rank, linear, batch 4096 | 1 rank | 2 ranks |"
    echo "|---|---|---|"
    for k in arrow_fixed_size_list plain_row_major arrow_struct_columns memcpy_features; do
        a=$(val "${k}_s" "${results[0]}"); b=$(val "${k}_s" "${results[1]}")
        awk -v k="$k" -v a="$a" -v b="$b" 'BEGIN{printf "| %s | %.2f ms | %.2f ms |\n", k, 1e3*a, 1e3*b}'
    done
    echo
    echo "heat2d 1024 x 1024, 2 ranks, best of $ROUNDS: $best_gang us per step with gang (initialized, gang_step every step, no training/output/checkpoints) against $best_nogang us for the stencil alone: $(awk -v g="$best_gang" -v n="$best_nogang" 'BEGIN{printf "%+.1f%%", 100*(g-n)/n}')"
} | tee bench/results/capi.md
