#!/usr/bin/env bash
# The multi-node benchmarks, on `./dev cluster` (two nodes n1, n2: network namespaces of
# this machine on a veth bridge, real slurmctld/slurmd; started here if it is not up):
#
#  1. barrier and f64 allreduce across the two nodes (one rank on each, TCP over the
#     bridge): gang's Comm beside the same C loops over raw MPI (bench/comm.sh with the
#     cluster's hostfile), written to bench/results/comm-2ranks-2nodes.{md,json};
#  2. launch to first barrier, 4 ranks over 2 nodes: `gang hello` under srun (inside
#     `salloc -N2 -n4`) and under mpirun (--hostfile), each beside its launcher running a
#     C program that only does MPI_Init, a barrier and MPI_Finalize (the limit); median of
#     ROUNDS whole-command wall times;
#  3. failure to resume under srun: `gang train` in a two-node allocation whose rank 3 (on
#     n2) is SIGKILLed at step 10; from the killed rank's exit record to the first start
#     record of the restarted gang, from the run's own records; median of ROUNDS.
#
#   bench/cluster.sh [ROUNDS]      (default 5)
# Writes bench/results/cluster.md and prints it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-5}"
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi

./dev cluster up --nodes 2 >/dev/null
# shellcheck disable=SC1091
source "${GANG_CLUSTER_DIR:-/tmp/gang-cluster}/env"
# The namespace nodes share this machine's cores: ranks that busy-poll their TCP progress
# loop take the core their peer needs (a barrier took 4 ms instead of 45 us with other work
# on the machine). Both sides, C and gang, run with the same setting.
export OMPI_MCA_mpi_yield_when_idle=1
cargo build --release -q -p gang-launcher -p gang-bench -p gang --bins
mkdir -p bench/build bench/results
mpicc -O2 -o bench/build/mpi_hello bench/c/mpi_hello.c
GANG="$PWD/target/release/gang"
RUNS="$PWD/bench/build/runs-cluster"

# 1. Comm across the nodes, one rank per node.
one_per_node="$PWD/bench/build/hostfile-1-per-node"
for n in $GANG_CLUSTER_NODES; do echo "$n slots=1"; done >"$one_per_node"
HOSTFILE="$one_per_node" TAG=2nodes bench/comm.sh 2 3 >/dev/null

# Whole-command wall time of "$@" in ms; fails loudly when the command fails.
ms() {
    local t0 t1
    t0=$(date +%s%N)
    "$@" >/dev/null 2>bench/build/cluster-last.err || { cat bench/build/cluster-last.err >&2; exit 1; }
    t1=$(date +%s%N)
    echo $(((t1 - t0) / 1000000))
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# 2. Launch to first barrier.
declare -A t
for k in srun_c srun_gang mpirun_c mpirun_gang; do t[$k]=""; done
for r in $(seq "$ROUNDS"); do
    echo "round $r/$ROUNDS: launch" >&2
    t[srun_c]+="$(ms timeout 60 salloc -N2 -n4 -O --quiet srun --mpi=pmix -O bench/build/mpi_hello) "
    t[srun_gang]+="$(ms timeout 60 salloc -N2 -n4 -O --quiet "$GANG" hello --run-dir "$RUNS") "
    t[mpirun_c]+="$(ms timeout 60 mpirun -n 4 --hostfile "$GANG_CLUSTER_HOSTFILE" bench/build/mpi_hello) "
    t[mpirun_gang]+="$(ms timeout 60 "$GANG" hello -n 4 --hostfile "$GANG_CLUSTER_HOSTFILE" --run-dir "$RUNS") "
done
med() { tr ' ' '\n' <<<"${t[$1]}" | grep . | median; }

# 3. Failure to resume under srun.
data="$PWD/bench/build/cluster-train-data"
rm -rf "$data"
"$GANG" gen -n 2 --rows 8000 --features 8 --classes 2 --partitions 4 --output "$data" --run-dir "$RUNS" >/dev/null
resume=""
for r in $(seq "$ROUNDS"); do
    echo "round $r/$ROUNDS: failure to resume under srun" >&2
    root="$PWD/bench/build/runs-resume-$r"
    rm -rf "$root" "bench/build/resume-ckpt-$r"
    GANG_FAULT="rank=3,step=10,kind=kill" timeout 120 salloc -N2 -n4 -O --quiet "$GANG" train --max-restarts 1 \
        --restart-backoff 0 --run-dir "$root" --input "$data" --label y --model logistic --epochs 2 \
        --batch-size 500 --checkpoint-dir "bench/build/resume-ckpt-$r" --checkpoint-every 3 \
        --output "bench/build/resume-$r.safetensors" >/dev/null 2>bench/build/cluster-last.err \
        || { cat bench/build/cluster-last.err >&2; exit 1; }
    resume+="$(python3 - "$root" <<'PY'
import glob, json, sys
run = glob.glob(sys.argv[1] + "/*/")[0]
killed = json.load(open(run + "attempt-0/ranks/rank-3.exit.json"))["time_unix_ns"]
starts = [json.load(open(f))["time_unix_ns"] for f in glob.glob(run + "attempt-1/ranks/rank-*.start.json")]
print((min(starts) - killed) // 1000000)
PY
) "
done
resume_med=$(tr ' ' '\n' <<<"$resume" | grep . | median)

{
    echo "Machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(nproc) cores; $(date -u +%Y-%m-%d)"
    echo "Cluster: ./dev cluster, nodes $GANG_CLUSTER_NODES (network namespaces, veth bridge), $(slurmctld -V); $(mpirun --version | head -1)"
    echo
    echo "| launch to first barrier, 4 ranks over 2 nodes (median of $ROUNDS, whole command) | gang hello | limit: C MPI_Init+barrier | ratio |"
    echo "|---|---|---|---|"
    for l in srun mpirun; do
        g=$(med "${l}_gang"); c=$(med "${l}_c")
        echo "| under $l | $g ms | $c ms | $(awk -v g="$g" -v c="$c" 'BEGIN{printf "%.2fx", g/c}') |"
    done
    echo
    echo "Failure to resume under srun (rank 3 on n2 SIGKILLed; its exit record to the restarted gang's first start record), median of $ROUNDS: $resume_med ms (all: $resume)"
    echo
    echo "Comm across the two nodes: bench/results/comm-2ranks-2nodes.md"
    echo
    cat bench/results/comm-2ranks-2nodes.md
} | tee bench/results/cluster.md
