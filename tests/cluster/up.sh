#!/bin/bash
# Test services on this host (make cluster-up): munge, a SLURM controller with two nodes (n1, n2: two slurmd
# daemons with their own ports and spool folders), and a PostgreSQL server with a role and database for tests.
# Debian's packages are installed where absent. Everything lives in $CLUSTER_DIR (default /tmp/denetdm-cluster):
# configs, logs, pid files (tests/cluster/down.sh stops the daemons by them) and env.sh, which the tests read.
set -euo pipefail
D=${CLUSTER_DIR:-/tmp/denetdm-cluster}
SUDO=$([ "$(id -u)" = 0 ] && echo || echo sudo)
PG_PORT=${PG_PORT:-25432}
CTLD_PORT=${CTLD_PORT:-26817}

missing=()
command -v slurmctld >/dev/null || [ -x /usr/sbin/slurmctld ] || missing+=(slurm-wlm)
command -v munged >/dev/null || [ -x /usr/sbin/munged ] || missing+=(munge)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  echo "cluster-up: installing ${missing[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null \
    || { $SUDO apt-get update -q >/dev/null && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null; }
fi
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)

"$(dirname "$0")/down.sh" >/dev/null 2>&1 || true  # a fresh start: nothing of an earlier run survives
$SUDO rm -rf "$D" && mkdir -p "$D" && chmod 700 "$D"

# munge: its own key and socket (munged refuses a key or folder that others may read; --force: as root)
dd if=/dev/urandom of="$D/munge.key" bs=1024 count=1 status=none && chmod 400 "$D/munge.key"
$SUDO /usr/sbin/munged --force --key-file="$D/munge.key" --socket="$D/munge.socket" --pid-file="$D/munged.pid" \
  --log-file="$D/munged.log" --seed-file="$D/munge.seed"

# SLURM: one controller, two nodes on this host, each of one CPU and a quarter of the host's memory (from the
# config: slurmd would otherwise count the whole host twice), so that two one-CPU jobs run on two nodes, whatever
# the host's core count
CPUS=1
MEM=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) / 4 ))
cat > "$D/slurm.conf" <<EOF
ClusterName=denetdm-test
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=$(id -un)
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$D/munge.socket
CredType=cred/munge
StateSaveLocation=$D/ctld
SlurmdSpoolDir=$D/spool-%n
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd-%n.pid
SlurmctldLogFile=$D/slurmctld.log
SlurmdLogFile=$D/slurmd-%n.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
NodeName=n1 NodeHostname=$(hostname -s) NodeAddr=127.0.0.1 Port=$((CTLD_PORT + 1)) CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
NodeName=n2 NodeHostname=$(hostname -s) NodeAddr=127.0.0.1 Port=$((CTLD_PORT + 2)) CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
mkdir -p "$D/ctld" "$D/spool-n1" "$D/spool-n2"
export SLURM_CONF="$D/slurm.conf"
$SUDO env SLURM_CONF="$SLURM_CONF" /usr/sbin/slurmctld -i
for n in n1 n2; do $SUDO env SLURM_CONF="$SLURM_CONF" /usr/sbin/slurmd -N "$n"; done

# PostgreSQL: a server of its own (initdb refuses root: as the postgres user), a role and database for tests
PG_USER=$([ "$(id -u)" = 0 ] && echo postgres || id -un)
as_pg() { if [ "$PG_USER" = "$(id -un)" ]; then "$@"; else runuser -u "$PG_USER" -- "$@"; fi; }
mkdir -p "$D/pg" && chown "$PG_USER" "$D/pg" && chmod 711 "$D"
echo denetdm-admin > "$D/pg/pw" && chown "$PG_USER" "$D/pg/pw"
as_pg "$PG_BIN/initdb" -D "$D/pg/data" -A scram-sha-256 -U postgres --pwfile="$D/pg/pw" >/dev/null && rm "$D/pg/pw"
as_pg "$PG_BIN/pg_ctl" -D "$D/pg/data" -l "$D/pg/log" -w -o "-p $PG_PORT -k $D/pg -c listen_addresses=127.0.0.1" start >/dev/null
PGPASSWORD=denetdm-admin "$PG_BIN/psql" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres \
  -c "CREATE ROLE denetdm LOGIN PASSWORD 'denetdm-test'" -c "CREATE DATABASE denetdm OWNER denetdm"

# the environment the tests (and a user trying it) need
cat > "$D/env.sh" <<EOF
export SLURM_CONF=$D/slurm.conf
export DENETDM_TEST_PG=postgresql+psycopg://denetdm@127.0.0.1:$PG_PORT/denetdm
export DENETDM_TEST_PG_PASSWORD=denetdm-test
EOF
for _ in $(seq 30); do  # both nodes idle: the cluster takes jobs
  [ "$(sinfo -h -o '%T' -N 2>/dev/null | grep -c idle)" = 2 ] && break
  sleep 1
done
sinfo -N -h -o '%N %T %c %m' | sed 's/^/cluster-up: node /'
echo "cluster-up: SLURM and PostgreSQL (port $PG_PORT) are up; source $D/env.sh"
