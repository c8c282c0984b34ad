#!/usr/bin/env bash
# Checks gang's cluster on one machine (tools/cluster.sh) end to end with a C MPI hello built
# with Open MPI (mpicc) and MPICH (mpicc.mpich): every way of launching that gang relies on.
#
#   tools/cluster-check.sh [--keep]
#
# Takes the cluster down, starts it twice at once (--nodes 2 --gpus 2: the second `up`
# must wait on the lock and find it up), times `up` from down, from up and `down`, runs the
# checks (each under `timeout`), then takes the cluster down again (--keep: leave it up).
# Prints one line per check and "N passed, N failed"; exits non-zero on any failure.
# Needs root. Output of each check: $GANG_CLUSTER_DIR/check/*.out.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CLUSTER="$HERE/cluster.sh"
KEEP=0
[ "${1:-}" = --keep ] && KEEP=1
T=60 # seconds allowed to each check

say() { printf '\033[1m[cluster-check]\033[0m %s\n' "$*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

passed=0
failed=0
pass() { passed=$((passed + 1)); printf 'PASS %-28s %s\n' "$1" "${2:-}"; }
fail() { failed=$((failed + 1)); printf 'FAIL %-28s %s\n' "$1" "${2:-}"; }

# --- up/down, timed; two concurrent `up` from down -------------------------------------
"$CLUSTER" down 2>/dev/null
t0="$(now)"
"$CLUSTER" up --nodes 2 --gpus 2 >/tmp/gang-check-up1.$$ 2>&1 &
up1=$!
sleep 0.05
"$CLUSTER" up --nodes 2 --gpus 2 >/tmp/gang-check-up2.$$ 2>&1 &
up2=$!
rc1=0; wait "$up1" || rc1=$?
t_up1="$(since "$t0")"
rc2=0; wait "$up2" || rc2=$?
t_up2="$(since "$t0")"
if [ "$rc1" = 0 ] && [ "$rc2" = 0 ]; then
    pass "up (two at once)" "first ${t_up1}s, second done at ${t_up2}s"
else
    fail "up (two at once)" "rc $rc1 $rc2: $(cat /tmp/gang-check-up1.$$ /tmp/gang-check-up2.$$)"
fi
rm -f /tmp/gang-check-up1.$$ /tmp/gang-check-up2.$$
t0="$(now)"
"$CLUSTER" up --nodes 2 --gpus 2 >/dev/null 2>&1 && pass "up when up" "$(since "$t0")s" || fail "up when up"

DIR="${GANG_CLUSTER_DIR:-/tmp/gang-cluster}"
# shellcheck source=/dev/null
source "$DIR/env"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
C="$DIR/check"
mkdir -p "$C"
cd "$C"

# --- the hello --------------------------------------------------------------------------
cat >hello.c <<'EOF'
/* One line per rank: its rank, the world size, its host, an allreduce of ones (the
 * world really talks), and the launcher variables it sees ("-": unset). */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
static const char *env(const char *n) { const char *v = getenv(n); return v ? v : "-"; }
int main(int argc, char **argv) {
    int rank, size, one = 1, sum = 0;
    char host[256];
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    gethostname(host, sizeof host);
    MPI_Allreduce(&one, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    printf("hello rank %d of %d on %s allreduce %d | SLURM_PROCID=%s SLURM_LOCALID=%s "
           "SLURM_NTASKS=%s SLURM_JOB_ID=%s SLURM_STEP_ID=%s OMPI_COMM_WORLD_RANK=%s "
           "OMPI_COMM_WORLD_SIZE=%s PMIX_RANK=%s PMI_RANK=%s PMI_SIZE=%s\n",
           rank, size, host, sum, env("SLURM_PROCID"), env("SLURM_LOCALID"),
           env("SLURM_NTASKS"), env("SLURM_JOB_ID"), env("SLURM_STEP_ID"),
           env("OMPI_COMM_WORLD_RANK"), env("OMPI_COMM_WORLD_SIZE"), env("PMIX_RANK"),
           env("PMI_RANK"), env("PMI_SIZE"));
    fflush(stdout);
    MPI_Finalize();
    return 0;
}
EOF
mpicc -O2 -o hello_openmpi hello.c
mpicc.mpich -O2 -o hello_mpich hello.c

# True when FILE holds exactly 4 hello lines: ranks 0..3 of a world of 4, the allreduce
# summing to 4, two ranks on n1 and two on n2.
four_ranks_two_hosts() {
    local f="$1"
    [ "$(grep -c '^hello rank' "$f")" = 4 ] || return 1
    [ "$(grep '^hello rank' "$f" | awk '{print $3}' | sort -n | xargs)" = "0 1 2 3" ] || return 1
    [ "$(grep '^hello rank' "$f" | awk '$5 != 4 || $9 != 4' | wc -l)" = 0 ] || return 1
    [ "$(grep '^hello rank' "$f" | awk '{print $7}' | sort | uniq -c | awk '{print $2 "x" $1}' | xargs)" = "n1x2 n2x2" ]
}

# run NAME COMMAND...: runs the command under timeout, output in NAME.out, timed.
run() {
    local name="$1" rc=0 t
    shift
    t="$(now)"
    timeout -k 5 "$T" "$@" >"$C/$name.out" 2>&1 || rc=$?
    ELAPSED="$(since "$t")"
    return "$rc"
}

# check NAME COMMAND...: a hello under a launcher, 4 ranks on n1 and n2.
check_hello() {
    local name="$1" rc=0
    shift
    run "$name" "$@" || rc=$?
    if [ "$rc" = 0 ] && four_ranks_two_hosts "$C/$name.out"; then
        pass "$name" "${ELAPSED}s: $*"
    else
        fail "$name" "rc $rc: $*; see $C/$name.out"
    fi
}

# --- 0. the agent refuses what is not a node ----------------------------------------------
rc=0
"$GANG_CLUSTER_AGENT" -x n9 true >"$C/agent-unknown.out" 2>&1 || rc=$?
if [ "$rc" = 255 ] && grep -q "unknown host 'n9'" "$C/agent-unknown.out"; then
    pass "agent refuses unknown host"
else
    fail "agent refuses unknown host" "rc $rc: $(cat "$C/agent-unknown.out")"
fi
run agent-n2 "$GANG_CLUSTER_AGENT" -x n2 'echo $(hostname)' || true
[ "$(cat "$C/agent-n2.out")" = n2 ] && pass "agent runs on n2" || fail "agent runs on n2" "$(cat "$C/agent-n2.out")"

# --- 1. srun hostname -------------------------------------------------------------------
rc=0
run 1-srun-hostname srun -N2 -n4 -O hostname || rc=$?
if [ "$rc" = 0 ] && [ "$(sort "$C/1-srun-hostname.out" | xargs)" = "n1 n1 n2 n2" ]; then
    pass 1-srun-hostname "${ELAPSED}s"
else
    fail 1-srun-hostname "rc $rc: $(xargs <"$C/1-srun-hostname.out")"
fi

# --- 2. srun with PMIx (Open MPI) and PMI2 (MPICH) ------------------------------------------
check_hello 2a-srun-pmix-openmpi srun -N2 -n4 -O --mpi=pmix ./hello_openmpi
check_hello 2b-srun-pmi2-mpich srun -N2 -n4 -O --mpi=pmi2 ./hello_mpich

# --- 3. Open MPI's mpirun through the agent ----------------------------------------------
check_hello 3-mpirun-hostfile mpirun --hostfile "$GANG_CLUSTER_HOSTFILE" -n 4 ./hello_openmpi

# --- 4. MPICH's mpiexec (hydra) through the agent ------------------------------------------
check_hello 4a-mpiexec-options mpiexec.mpich -launcher ssh -launcher-exec "$GANG_CLUSTER_AGENT" \
    -localhost "$GANG_CLUSTER_ADDR" -f "$GANG_CLUSTER_HOSTFILE_MPICH" -n 4 ./hello_mpich
# The same from the env file alone (HYDRA_LAUNCHER, HYDRA_LAUNCHER_EXEC, HYDRA_CONFIG_FILE).
check_hello 4b-mpiexec-env mpiexec.mpich -f "$GANG_CLUSTER_HOSTFILE_MPICH" -n 4 ./hello_mpich

# --- 5. mpirun (and mpiexec) inside an allocation -------------------------------------------
check_hello 5a-salloc-mpirun salloc -N2 -n4 -O mpirun ./hello_openmpi
check_hello 5b-salloc-mpiexec salloc -N2 -n4 -O mpiexec.mpich ./hello_mpich

# --- 6. sbatch --------------------------------------------------------------------------
cat >"$C/job.sh" <<EOF
#!/bin/sh
#SBATCH -N2
#SBATCH -n2
#SBATCH -o $C/sbatch-%j.txt
srun hostname
EOF
rm -f "$C"/sbatch-*.txt
# Polled rather than `sbatch --wait`, which looks at the job only every ~10 s.
rc=0
t="$(now)"
jid="$(timeout 10 sbatch --parsable "$C/job.sh" 2>"$C/6-sbatch.out")" || rc=$?
out="$C/sbatch-$jid.txt"
if [ "$rc" = 0 ]; then
    rc=1
    for _ in $(seq 600); do
        if [ -z "$(squeue -h -j "$jid" 2>/dev/null)" ] && [ -s "$out" ]; then rc=0; break; fi
        sleep 0.1
    done
fi
if [ "$rc" = 0 ] && [ "$(sort "$out" | xargs)" = "n1 n2" ]; then
    pass 6-sbatch "$(since "$t")s from submission to the job gone and its output written: $(basename "$out")"
else
    fail 6-sbatch "rc $rc: $(cat "$C/6-sbatch.out") $(cat "$out" 2>/dev/null)"
fi

# --- 7. scancel ends a running step's processes ---------------------------------------------
# The step runs `sleep 3131` on both nodes; pgrep counts those processes (srun hands
# the tasks the full path, /usr/bin/sleep).
sleepers() { pgrep -c -x -f '(/usr)?(/bin/)?sleep 3131' || true; }
srun -N2 -n2 -J gang-check-cancel sleep 3131 >"$C/7-scancel.out" 2>&1 &
srun_pid=$!
for _ in $(seq 200); do [ "$(sleepers)" = 2 ] && break; sleep 0.05; done
job="$(squeue -h -n gang-check-cancel -o %i | head -1)"
if [ "$(sleepers)" != 2 ] || [ -z "$job" ]; then
    fail 7-scancel "the step did not start (sleepers $(sleepers), job '$job')"
    kill "$srun_pid" 2>/dev/null || true
else
    t="$(now)"
    scancel "$job"
    for _ in $(seq 400); do [ "$(sleepers)" = 0 ] && break; sleep 0.025; done
    t_gone="$(since "$t")"
    # srun is this shell's child: once it exits it is a zombie until waited for (and
    # kill -0 still succeeds), so look at its state.
    rc=1
    for _ in $(seq 400); do
        st="$(sed 's/^.*) //' "/proc/$srun_pid/stat" 2>/dev/null | cut -c1)" || st=""
        [ -z "$st" ] || [ "$st" = Z ] && { rc=0; break; }
        sleep 0.025
    done
    t_srun="$(since "$t")"
    if [ "$(sleepers)" = 0 ] && [ "$rc" = 0 ]; then
        pass 7-scancel "processes gone ${t_gone}s after scancel, srun exited at ${t_srun}s"
    else
        fail 7-scancel "sleepers left $(sleepers), srun still running: $rc"
    fi
fi
wait "$srun_pid" 2>/dev/null || true

# --- 8. GPUs (GRES) per task --------------------------------------------------------------
rc=0
run 8-gpus-per-task srun -N2 -n4 -O --gpus-per-task=1 \
    sh -c 'echo "task $SLURM_PROCID on $(hostname) CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-unset} SLURM_STEP_GPUS=${SLURM_STEP_GPUS:-unset}"' ||
    rc=$?
if [ "$rc" = 0 ] && [ "$(grep -c '^task' "$C/8-gpus-per-task.out")" = 4 ] &&
    ! grep -q '=unset' "$C/8-gpus-per-task.out"; then
    pass 8-gpus-per-task "${ELAPSED}s"
else
    fail 8-gpus-per-task "rc $rc; see $C/8-gpus-per-task.out"
fi

# --- what the ranks see ----------------------------------------------------------------------
for f in 2a-srun-pmix-openmpi 2b-srun-pmi2-mpich 3-mpirun-hostfile 4b-mpiexec-env 5a-salloc-mpirun 5b-salloc-mpiexec; do
    echo "--- $f"
    grep '^hello rank' "$C/$f.out" | sort -k3n | sed 's/ allreduce 4//'
done
echo "--- 8-gpus-per-task"
sort "$C/8-gpus-per-task.out"

# --- down, timed ----------------------------------------------------------------------------
if [ "$KEEP" = 0 ]; then
    t0="$(now)"
    "$CLUSTER" down 2>/dev/null
    left="$(for n in /run/netns/gang-*; do [ -e "$n" ] && echo "$n"; done; ip -o link show 2>/dev/null | grep -E 'gangbr0|gangv' || true)"
    [ -z "$left" ] && pass down "$(since "$t0")s" || fail down "left: $left"
fi

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
