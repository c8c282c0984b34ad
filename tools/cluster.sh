#!/usr/bin/env bash
# gang's "cluster on one machine": a Slurm controller and K compute nodes n1..nK on this host,
# each node a network namespace of its own behind a bridge, so that srun, sbatch, salloc,
# Open MPI's mpirun and MPICH's mpiexec run real multi-node jobs without a cluster. For the
# tests and for users trying gang.
#
#   tools/cluster.sh up [--nodes K] [--gpus G]   start it (K=2, G=0 by default); idempotent
#   tools/cluster.sh down                        stop everything it started; idempotent
#   tools/cluster.sh status                      up or down, the nodes and their state
#   tools/cluster.sh env                         print the path of the env file (when up)
#
# Then `source "$GANG_CLUSTER_DIR/env"` (the path is printed by `up`; default
# /tmp/gang-cluster/env) for SLURM_CONF, the hostfiles and the launcher variables.
#
# Layout (needs root, Debian/Ubuntu for the package install):
#   bridge gangbr0 10.77.0.1/24 (the controller's address, in the root namespace)
#   node nI: network namespace gang-nI (/run/netns/gang-nI), veth gangvI <-> gang0 inside
#            with 10.77.0.(10+I)/24, loopback up; slurmd -N nI in it, in its own UTS
#            namespace with host name nI
#   munged (as user munge) and slurmctld in the root namespace
#   state, spool, logs, pids, config: $GANG_CLUSTER_DIR (default /tmp/gang-cluster),
#            removed and made anew on every start (stale pmix sockets and job state bite)
# One such cluster per machine: the bridge, the namespaces and the controller's port are
# fixed names, and `down` removes every gang-* namespace whatever the directory.
#
# Facts this relies on (shared/ENVIRONMENT.md, "Clusters on one machine"): munged refuses to
# run as root; slurmd must be entered with `nsenter --net`, not `ip netns exec` (which
# remounts /sys and breaks slurmd's cgroup plugin); slurmctld takes 5-8 s to exit after
# SIGTERM, so `down` kills it after a short grace (its state is thrown away anyway).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DIR="${GANG_CLUSTER_DIR:-/tmp/gang-cluster}"
# The lock lives beside the state directory, not in it: `up` removes and remakes the
# directory, and a lock file that is replaced no longer excludes anyone.
LOCK="${DIR%/}.lock"
AGENT="$HERE/cluster-agent"
BRIDGE=gangbr0
NET=10.77.0
ADDR="$NET.1"
CTLD_PORT=6817
# How long `up` waits for the nodes to be idle, and for another `up`/`down` to finish.
UP_TIMEOUT="${GANG_CLUSTER_TIMEOUT:-30}"
LOCK_TIMEOUT=120

APT_PACKAGES=(slurmctld slurmd slurm-client munge mpich libmpich-dev openmpi-bin libopenmpi-dev
    iproute2 util-linux)

say() { printf '\033[1m[cluster]\033[0m %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

usage() {
    sed -n '7,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 2
}

# Installs the Debian packages that are missing, as ./dev's ensure_packages does.
ensure_packages() {
    local missing=() p
    for p in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && return
    command -v apt-get >/dev/null ||
        die "missing system packages: ${missing[*]}; this script installs them on Debian/Ubuntu only"
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# ---------------------------------------------------------------------------------------
# Processes. Each daemon's PID is recorded in $DIR/pids/NAME.pid when it is started.

# True when PID is a live process (not a zombie: PID 1 here may not reap orphans, and
# kill -0 succeeds on a zombie) whose command line contains WORD (guards against PID reuse).
alive() {
    local pid="$1" word="$2" state cmd
    [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
    state="$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -c1)" || return 1
    [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ] || return 1
    cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
    [[ "$cmd" == *"$word"* ]]
}

# Those of the given PIDs that are still running (not gone, not zombies).
still_running() {
    local pid
    for pid in "$@"; do
        [ -r "/proc/$pid/stat" ] && [ "$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -c1)" != Z ] &&
            echo "$pid"
    done
    return 0
}

pid_of() { cat "$DIR/pids/$1.pid" 2>/dev/null || true; }

# The recorded daemons: "NAME WORD" (WORD: what its command line must contain).
daemons() {
    local n
    echo "munged munged"
    echo "slurmctld slurmctld"
    for n in $(recorded_nodes); do echo "slurmd-$n slurmd"; done
}

recorded_nodes() { [ -r "$DIR/nodes" ] && cat "$DIR/nodes" || true; }

# PIDs of every process inside the nodes' network namespaces (/run/netns/gang-*):
# slurmd, slurmstepd, job steps, orted, ranks, all of them the cluster's. Matched by the
# namespaces' inodes, with one stat over /proc (a readlink per process costs ~1 s).
pids_in_namespaces() {
    local inos
    inos="$(stat -L -c %i /run/netns/gang-* 2>/dev/null | paste -sd'|' -)" || return 0
    [ -n "$inos" ] || return 0
    stat -L -c '%i %n' /proc/[0-9]*/ns/net 2>/dev/null |
        awk -v re="^($inos)\$" '$1 ~ re { split($2, p, "/"); print p[3] }'
    return 0
}

# PIDs of the processes with SLURM_CONF=$DIR/etc/slurm.conf in their environment that
# belong to the cluster or would wait forever once it is gone: slurmstepd (slurmd hands
# it SLURM_CONF), srun and salloc, and whatever runs inside an allocation (SLURM_JOB_ID
# set: salloc's command, mpirun under salloc, a job's shell); never this script nor its
# ancestors (`down` may be called from inside an allocation).
clients() {
    local p f comm keep=" "
    p="$BASHPID"
    while [ -n "$p" ] && [ "$p" -gt 1 ]; do
        keep="$keep$p "
        p="$(awk '/^PPid:/ { print $2 }' "/proc/$p/status" 2>/dev/null)" || break
    done
    for f in $(grep -lzx -- "SLURM_CONF=$DIR/etc/slurm.conf" /proc/[0-9]*/environ 2>/dev/null); do
        p="${f#/proc/}"
        p="${p%/environ}"
        [[ "$keep" == *" $p "* ]] && continue
        comm="$(cat "/proc/$p/comm" 2>/dev/null)" || continue
        if [ "$comm" = srun ] || [ "$comm" = salloc ] || [ "$comm" = slurmstepd ] ||
            grep -qz '^SLURM_JOB_ID=' "$f" 2>/dev/null; then
            echo "$p"
        fi
    done
    return 0
}

# ---------------------------------------------------------------------------------------
# State.

# The nodes' states, one "NAME STATE" a line, from the controller (empty when it is down).
node_states() {
    [ -r "$DIR/etc/slurm.conf" ] || return 0
    SLURM_CONF="$DIR/etc/slurm.conf" timeout 5 sinfo -h -N -o '%N %T' 2>/dev/null | sort -u || true
}

# True when every recorded daemon is alive and every node is in a usable state (idle, or
# running jobs). The state is what sinfo prints; a trailing * means "not responding".
is_up() {
    local name word n st ok=0 want got
    [ -r "$DIR/nodes" ] || return 1
    while read -r name word; do
        alive "$(pid_of "$name")" "$word" || return 1
    done < <(daemons)
    want="$(recorded_nodes | wc -w)"
    got=0
    while read -r n st; do
        case "$st" in
            idle | allocated | mixed | completing) got=$((got + 1)) ;;
            *) ok=1 ;;
        esac
    done < <(node_states)
    [ "$ok" = 0 ] && [ "$got" = "$want" ]
}

# ---------------------------------------------------------------------------------------
# down: by recorded PIDs, then whatever is left in the namespaces, then the network.

# Every PID of the cluster now: the recorded daemons, every process in a node's namespace
# (slurmstepd, tasks, orted, hydra proxies; also nodes of an earlier run whose state
# directory is gone), slurmstepd processes of this configuration outside them (a step
# whose namespace was already deleted), and the clients (see clients()).
cluster_pids() {
    local name word pid
    if [ -r "$DIR/nodes" ]; then
        while read -r name word; do
            pid="$(pid_of "$name")"
            alive "$pid" "$word" && echo "$pid"
        done < <(daemons)
    fi
    pids_in_namespaces
    clients
    return 0
}

cluster_down() {
    local pids=() i
    # Rounds: a slurmd that is still alive while the first round looks can fork a new
    # slurmstepd before its SIGTERM lands; the next round finds that one.
    for _ in 1 2 3; do
        mapfile -t pids < <(cluster_pids | sort -u)
        [ "${#pids[@]}" -eq 0 ] && break
        kill -TERM "${pids[@]}" 2>/dev/null || true
        # slurmd, munged and the steps go within ~0.1 s; slurmctld lingers 5-8 s, and its
        # state is thrown away; srun answers SIGTERM by cancelling its step and waiting for
        # the step's end, which never comes once the controller is gone. So: SIGKILL what
        # is left after a 0.5 s grace, then wait (2 s at most) until all are gone, so that
        # the next `up` finds the port free.
        for i in $(seq 50); do
            mapfile -t pids < <(still_running "${pids[@]}")
            [ "${#pids[@]}" -eq 0 ] && break
            [ "$i" = 10 ] && kill -KILL "${pids[@]}" 2>/dev/null
            sleep 0.05
        done
        [ "${#pids[@]}" -eq 0 ] || say "warning: processes ${pids[*]} did not exit"
    done
    # The network: namespaces (their veth ends go with them), host veths, bridge.
    for n in /run/netns/gang-*; do
        [ -e "$n" ] && ip netns delete "${n#/run/netns/}" 2>/dev/null || true
    done
    for n in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' | grep '^gangv[0-9]' || true); do
        ip link delete "$n" 2>/dev/null || true
    done
    ip link show "$BRIDGE" >/dev/null 2>&1 && ip link delete "$BRIDGE" 2>/dev/null || true
    rm -f "$DIR/pids/"*.pid 2>/dev/null || true
    rm -f "$DIR/nodes" 2>/dev/null || true
}

# ---------------------------------------------------------------------------------------
# up

# Shows the last lines of every daemon log (for a start that failed).
log_tails() {
    local f
    for f in "$DIR"/log/*.log "$DIR"/munge/munged.log; do
        [ -r "$f" ] || continue
        echo "--- $f (last 15 lines)" >&2
        tail -n 15 "$f" >&2
    done
}

# A start that failed: the daemon logs' tails, then everything stopped (the files stay).
start_fail() {
    say "error: $*"
    log_tails
    cluster_down
    say "stopped what had started; configuration and logs left in $DIR"
    exit 1
}

start_munge() {
    local key=/etc/munge/munge.key
    # munged refuses to run as root (insecure PRNG seed dir): it runs as user munge, with
    # its socket, pid, log and seed in $DIR/munge, owned by munge. /run/munge is the
    # package's own directory; made owned by munge so that plain munge tools behave too.
    install -d -o munge -g munge -m 0755 /run/munge
    if ! [ -s "$key" ]; then
        say "creating the munge key $key"
        install -d -o munge -g munge -m 0700 /etc/munge
        if command -v mungekey >/dev/null; then
            setpriv --reuid munge --regid munge --init-groups mungekey --create --keyfile="$key"
        else
            dd if=/dev/urandom bs=1 count=1024 of="$key" status=none
        fi
        chown munge:munge "$key"
        chmod 0400 "$key"
    fi
    install -d -o munge -g munge -m 0755 "$DIR/munge"
    # Without -F munged forks once it is ready: when this returns the socket accepts.
    setpriv --reuid munge --regid munge --init-groups \
        munged --socket="$DIR/munge/munge.socket" --pid-file="$DIR/munge/munged.pid" \
        --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed" \
        --key-file="$key" </dev/null >>"$DIR/munge/munged.out" 2>&1 9>&- ||
        start_fail "munged did not start"
    cp "$DIR/munge/munged.pid" "$DIR/pids/munged.pid"
}

make_network() {
    local k="$1" i ns
    ip link add "$BRIDGE" type bridge
    ip addr add "$ADDR/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    for i in $(seq "$k"); do
        ns="gang-n$i"
        ip netns add "$ns"
        ip link add "gangv$i" type veth peer name gang0 netns "$ns"
        ip link set "gangv$i" master "$BRIDGE" up
        ip -n "$ns" addr add "$NET.$((10 + i))/24" dev gang0
        ip -n "$ns" link set gang0 up
        ip -n "$ns" link set lo up
    done
}

write_slurm_conf() {
    local k="$1" g="$2" cpus mem i gres=""
    cpus="$(nproc)"
    # Modest, so that K nodes fit on one machine (slurmd drains a node whose RealMemory is
    # above what it finds); memory is not a consumable here (CR_Core).
    mem=1000
    [ "$g" -gt 0 ] && gres=" Gres=gpu:$g"
    cat >"$DIR/etc/slurm.conf" <<EOF
# Written by tools/cluster.sh: gang's cluster on one machine (remade on every start).
ClusterName=gang
SlurmctldHost=$(hostname -s)($ADDR)
SlurmctldPort=$CTLD_PORT
SlurmdPort=6818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
# Per node: pmix steps of two nodes otherwise collide ("spmix_appdir ... File exists").
TmpFS=$DIR/tmp/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
MailProg=/bin/true
# A test cluster: SIGKILL 2 s after the SIGTERM of scancel or a time limit (default 30 s).
KillWait=2
InactiveLimit=0
$([ "$g" -gt 0 ] && echo "GresTypes=gpu")
EOF
    for i in $(seq "$k"); do
        echo "NodeName=n$i NodeHostname=n$i NodeAddr=$NET.$((10 + i)) CPUs=$cpus RealMemory=$mem$gres State=UNKNOWN"
    done >>"$DIR/etc/slurm.conf"
    echo "PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP" >>"$DIR/etc/slurm.conf"

    # Fake GPUs: character devices with the NVIDIA major number, shared by all nodes (no
    # process opens them; Slurm only hands their indices out as CUDA_VISIBLE_DEVICES).
    if [ "$g" -gt 0 ]; then
        mkdir -p "$DIR/dev"
        for i in $(seq 0 $((g - 1))); do
            mknod "$DIR/dev/nvidia$i" c 195 "$i"
        done
        local files="$DIR/dev/nvidia0"
        [ "$g" -gt 1 ] && files="$DIR/dev/nvidia[0-$((g - 1))]"
        echo "NodeName=n[1-$k] Name=gpu File=$files" >"$DIR/etc/gres.conf"
    fi
}

write_env() {
    local k="$1" g="$2" i nodes="" cpus
    cpus="$(nproc)"
    for i in $(seq "$k"); do nodes="$nodes n$i"; done
    nodes="${nodes# }"
    : >"$DIR/hostfile"
    : >"$DIR/hostfile.mpich"
    for i in $(seq "$k"); do
        echo "n$i slots=$cpus" >>"$DIR/hostfile"
        echo "n$i:$cpus" >>"$DIR/hostfile.mpich"
    done
    # hydra's -localhost (the address its proxies call back) has no environment variable,
    # but hydra reads options from the file named by HYDRA_CONFIG_FILE; the command line
    # wins over it. Without it the proxies in the namespaces call the host's name, which
    # resolves to 127.0.0.1 there, and mpiexec hangs.
    echo "-localhost $ADDR" >"$DIR/hydra.conf"
    cat >"$DIR/env" <<EOF
# Written by tools/cluster.sh up: source this file to use gang's cluster on one machine.
export GANG_CLUSTER_DIR="$DIR"
# Slurm's clients (srun, sbatch, salloc, sinfo, scancel) read the cluster's configuration.
export SLURM_CONF="$DIR/etc/slurm.conf"
export GANG_CLUSTER_NODES="$nodes"
export GANG_CLUSTER_GPUS=$g
export GANG_CLUSTER_SLOTS=$cpus
# The controller's address (the bridge, in the root namespace): what hydra's -localhost needs.
export GANG_CLUSTER_ADDR=$ADDR
# Open MPI hostfile ("nI slots=N") and the same nodes as an MPICH hostfile ("nI:N").
export GANG_CLUSTER_HOSTFILE="$DIR/hostfile"
export GANG_CLUSTER_HOSTFILE_MPICH="$DIR/hostfile.mpich"
# ssh's stand-in: AGENT HOST COMMAND... runs COMMAND in node HOST's namespaces.
export GANG_CLUSTER_AGENT="$AGENT"
# Open MPI: mpirun --hostfile \$GANG_CLUSTER_HOSTFILE starts its orted through the agent.
# oob and TCP BTL on the bridge's subnet only: not needed on this machine (its other
# addresses are unreachable from a namespace and fail at once), but an interface that is
# up and routes elsewhere would make orted and ranks wait on connects that never answer.
export OMPI_MCA_plm_rsh_agent="$AGENT"
export OMPI_MCA_oob_tcp_if_include=$NET.0/24
export OMPI_MCA_btl_tcp_if_include=$NET.0/24
# MPICH's hydra: mpiexec.mpich -f \$GANG_CLUSTER_HOSTFILE_MPICH starts its proxies
# through the agent (the env forms of -launcher ssh -launcher-exec AGENT), and they call
# back the bridge's address (-localhost, from the config file; no env form).
export HYDRA_LAUNCHER=ssh
export HYDRA_LAUNCHER_EXEC="$AGENT"
export HYDRA_CONFIG_FILE="$DIR/hydra.conf"
EOF
    # The cluster runs as root, and so do its users here: Open MPI refuses root without these.
    if [ "$(id -u)" = 0 ]; then
        echo "# Open MPI refuses to run as root without these (the cluster itself needs root)."
        echo "export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"
    fi >>"$DIR/env"
}

start_slurm() {
    local k="$1" i n ctld_pid
    setsid slurmctld -D -c -f "$DIR/etc/slurm.conf" </dev/null >>"$DIR/log/slurmctld.out" 2>&1 9>&- &
    ctld_pid=$!
    echo "$ctld_pid" >"$DIR/pids/slurmctld.pid"
    # slurmd retries a failed registration only after some seconds: start the nodes once
    # the controller listens.
    for i in $(seq 200); do
        ss -ltnH "sport = :$CTLD_PORT" 2>/dev/null | grep -q . && break
        alive "$ctld_pid" slurmctld || start_fail "slurmctld exited at start"
        [ "$i" = 200 ] && start_fail "slurmctld does not listen on port $CTLD_PORT after 10 s"
        sleep 0.05
    done
    for i in $(seq "$k"); do
        n="n$i"
        mkdir -p "$DIR/spool/$n" "$DIR/tmp/$n"
        # The chain execs all the way down: $! is slurmd's PID.
        setsid nsenter --net="/run/netns/gang-$n" unshare --uts \
            sh -c 'hostname "$1" && exec slurmd -D -N "$1" -f "$2"' sh "$n" "$DIR/etc/slurm.conf" \
            </dev/null >>"$DIR/log/slurmd-$n.out" 2>&1 9>&- &
        echo "$!" >"$DIR/pids/slurmd-$n.pid"
    done
}

wait_idle() {
    local k="$1" deadline states idle
    deadline=$(($(date +%s) + UP_TIMEOUT))
    while :; do
        states="$(node_states)"
        idle="$(printf '%s\n' "$states" | awk '$2 == "idle"' | wc -l)"
        [ "$idle" = "$k" ] && return 0
        while read -r name word; do
            alive "$(pid_of "$name")" "$word" || start_fail "$name exited at start"
        done < <(daemons)
        [ "$(date +%s)" -ge "$deadline" ] &&
            start_fail "the nodes are not idle after ${UP_TIMEOUT}s; sinfo says: $(echo "${states:-nothing}" | paste -sd, -)"
        sleep 0.05
    done
}

print_source() {
    say "up: nodes $(recorded_nodes | xargs) ($(cat "$DIR/config")); to use it:"
    echo "source $DIR/env"
}

cluster_up() {
    local k=2 g=0
    while [ "$#" -gt 0 ]; do
        case "$1" in
            --nodes) k="${2:?--nodes needs a number}"; shift 2 ;;
            --nodes=*) k="${1#*=}"; shift ;;
            --gpus) g="${2:?--gpus needs a number}"; shift 2 ;;
            --gpus=*) g="${1#*=}"; shift ;;
            *) usage ;;
        esac
    done
    [[ "$k" =~ ^[0-9]+$ ]] && [ "$k" -ge 1 ] && [ "$k" -le 200 ] || die "--nodes: 1..200, not '$k'"
    [[ "$g" =~ ^[0-9]+$ ]] && [ "$g" -le 16 ] || die "--gpus: 0..16, not '$g'"
    [ "$(id -u)" = 0 ] || die "needs root (network namespaces, munged as user munge)"
    ensure_packages

    # One up/down at a time; a second `up` waits here, then finds the cluster up. The
    # daemons are started with fd 9 closed (9>&-): one that kept it would hold the lock.
    exec 9>"$LOCK"
    flock -w "$LOCK_TIMEOUT" 9 || die "another tools/cluster.sh holds $LOCK for over ${LOCK_TIMEOUT}s"

    local want="nodes=$k gpus=$g"
    if is_up && [ "$(cat "$DIR/config" 2>/dev/null)" = "$want" ]; then
        print_source
        return 0
    fi
    # Down, partly up, or up with another shape: start from nothing.
    cluster_down
    if ss -ltnH "sport = :$CTLD_PORT" 2>/dev/null | grep -q .; then
        die "port $CTLD_PORT is taken by another program (another slurmctld?): $(ss -ltnpH "sport = :$CTLD_PORT" | head -1)"
    fi
    rm -rf "$DIR"
    mkdir -p "$DIR"/{etc,state,spool,tmp,run,log,pids}
    echo "$want" >"$DIR/config"
    for i in $(seq "$k"); do echo "n$i"; done >"$DIR/nodes"

    start_munge
    make_network "$k"
    write_slurm_conf "$k" "$g"
    write_env "$k" "$g"
    start_slurm "$k"
    wait_idle "$k"
    print_source
}

cluster_status() {
    if is_up; then
        echo "up ($(cat "$DIR/config")), state in $DIR; source $DIR/env"
        node_states | sed 's/^/  /'
        return 0
    fi
    if [ -r "$DIR/nodes" ] || compgen -G '/run/netns/gang-*' >/dev/null; then
        echo "partly up (some daemons or nodes are not running); ./dev cluster down cleans up"
        local name word
        while read -r name word; do
            alive "$(pid_of "$name")" "$word" && echo "  $name: running" || echo "  $name: not running"
        done < <(daemons)
        node_states | sed 's/^/  /'
        return 1
    fi
    echo "down"
    return 1
}

cmd="${1:-}"
[ "$#" -gt 0 ] && shift
case "$cmd" in
    up) cluster_up "$@" ;;
    down)
        [ "$(id -u)" = 0 ] || die "needs root"
        exec 9>"$LOCK"
        flock -w "$LOCK_TIMEOUT" 9 || die "another tools/cluster.sh holds $LOCK for over ${LOCK_TIMEOUT}s"
        cluster_down
        say "down" ;;
    status) cluster_status ;;
    env) [ -r "$DIR/env" ] && is_up && echo "$DIR/env" || die "the cluster is not up" ;;
    *) usage ;;
esac
