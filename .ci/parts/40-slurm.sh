# A one-node SLURM cluster on 127.0.0.1 for tests/test_slurm.py (sourced by .ci/run).
#
# Installs Debian's slurm-wlm and munge when missing (needs root, like PostgreSQL in .ci/run),
# writes a slurm.conf for this host (2 CPUs, one partition `debug`), starts munged, slurmctld and
# slurmd with every file in a temp folder, waits until the node is idle, exports SLURM_CONF and
# SEGSWEEP_TEST_SLURM=1, and registers a stop function in CLEANUPS (daemons killed, folder removed).
# With SEGSWEEP_TEST_SLURM already set, the cluster it names is used and none is started.

if [ -z "${SEGSWEEP_TEST_SLURM:-}" ]; then
    if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
        apt_install SLURM ", or set SEGSWEEP_TEST_SLURM=1 with SLURM_CONF naming a cluster this user can submit to" \
            slurm-wlm munge
    fi
    # The submitit extra (workers are submitted through it).
    if ! .venv/bin/python -c 'import submitit' 2>/dev/null; then
        .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[slurm]'
    fi

    SLURM_CI_DIR="$(mktemp -d -t segsweep-slurm.XXXXXX)"
    stop_slurm() {
        local file
        for file in slurmd slurmctld munged; do
            [ -s "$SLURM_CI_DIR/$file.pid" ] && kill "$(cat "$SLURM_CI_DIR/$file.pid")" 2>/dev/null || true
        done
        sleep 1
        for file in slurmd slurmctld munged; do
            [ -s "$SLURM_CI_DIR/$file.pid" ] && kill -9 "$(cat "$SLURM_CI_DIR/$file.pid")" 2>/dev/null || true
        done
        rm -rf "$SLURM_CI_DIR"
    }
    CLEANUPS+=(stop_slurm)
    mkdir -p "$SLURM_CI_DIR/munge" "$SLURM_CI_DIR/state" "$SLURM_CI_DIR/spool"
    chmod 700 "$SLURM_CI_DIR/munge"

    # munged: its own key, socket and files in the temp folder (--force: it may run as root here).
    dd if=/dev/urandom of="$SLURM_CI_DIR/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$SLURM_CI_DIR/munge/munge.key"
    SLURM_CI_SOCKET="$SLURM_CI_DIR/munge/munge.socket"
    munged --force --key-file="$SLURM_CI_DIR/munge/munge.key" --socket="$SLURM_CI_SOCKET" \
        --pid-file="$SLURM_CI_DIR/munged.pid" --log-file="$SLURM_CI_DIR/munged.log" \
        --seed-file="$SLURM_CI_DIR/munge/munge.seed" \
        || { cat "$SLURM_CI_DIR/munged.log" >&2; exit 1; }

    slurm_ci_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
    SLURM_CI_NODE="$(hostname -s)"
    SLURM_CI_USER="$(id -un)"
    # slurmd runs jobs as their owners, which needs root; without root it runs as this user (one user's jobs only).
    if [ "$(id -u)" -eq 0 ]; then SLURM_CI_SLURMD_USER=root; else SLURM_CI_SLURMD_USER="$SLURM_CI_USER"; fi
    cat > "$SLURM_CI_DIR/slurm.conf" <<EOF
ClusterName=segsweep-ci
SlurmctldHost=$SLURM_CI_NODE(127.0.0.1)
SlurmctldPort=$(slurm_ci_port)
SlurmdPort=$(slurm_ci_port)
SlurmUser=$SLURM_CI_USER
SlurmdUser=$SLURM_CI_SLURMD_USER
AuthType=auth/munge
AuthInfo=socket=$SLURM_CI_SOCKET
CredType=cred/munge
StateSaveLocation=$SLURM_CI_DIR/state
SlurmdSpoolDir=$SLURM_CI_DIR/spool
SlurmctldPidFile=$SLURM_CI_DIR/slurmctld.pid
SlurmdPidFile=$SLURM_CI_DIR/slurmd.pid
SlurmctldLogFile=$SLURM_CI_DIR/slurmctld.log
SlurmdLogFile=$SLURM_CI_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
MpiDefault=none
SwitchType=switch/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
SlurmdParameters=config_overrides
JobRequeue=1
KillWait=10
MinJobAge=300
NodeName=$SLURM_CI_NODE NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=debug Nodes=$SLURM_CI_NODE Default=YES MaxTime=INFINITE State=UP
EOF
    export SLURM_CONF="$SLURM_CI_DIR/slurm.conf"
    slurmctld -f "$SLURM_CONF" -i || { cat "$SLURM_CI_DIR/slurmctld.log" >&2; exit 1; }
    slurmd -f "$SLURM_CONF" -N "$SLURM_CI_NODE" || { cat "$SLURM_CI_DIR/slurmd.log" >&2; exit 1; }

    # Bounded wait for the node to register and go idle (about a second when all is well).
    for _ in $(seq 1 60); do
        if [ "$(sinfo --noheader --nodes="$SLURM_CI_NODE" --format=%t 2>/dev/null | tr -d ' *')" = "idle" ]; then
            break
        fi
        sleep 1
    done
    if [ "$(sinfo --noheader --nodes="$SLURM_CI_NODE" --format=%t 2>/dev/null | tr -d ' *')" != "idle" ]; then
        echo "ci: the SLURM node did not go idle within 60 s" >&2
        sinfo >&2 || true
        tail -n 20 "$SLURM_CI_DIR/slurmctld.log" "$SLURM_CI_DIR/slurmd.log" >&2 || true
        exit 1
    fi
    export SEGSWEEP_TEST_SLURM=1
    echo "ci: SLURM $(sinfo --version | awk '{print $2}') on $SLURM_CI_NODE, SLURM_CONF=$SLURM_CONF" >&2
fi
