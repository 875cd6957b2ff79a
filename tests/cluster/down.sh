#!/bin/bash
# Stop the test services of tests/cluster/up.sh by their pid files (make cluster-down); the folder stays, for its logs.
D=${CLUSTER_DIR:-/tmp/denetdm-cluster}
SUDO=$([ "$(id -u)" = 0 ] && echo || echo sudo)
[ -d "$D" ] || exit 0
rm -f "$D/env.sh"  # the tests read it to find the services: they are gone
if [ -f "$D/pg/data/postmaster.pid" ]; then
  PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  owner=$(stat -c %U "$D/pg/data")
  if [ "$owner" = "$(id -un)" ]; then "$PG_BIN/pg_ctl" -D "$D/pg/data" -m fast -w stop; else
    runuser -u "$owner" -- "$PG_BIN/pg_ctl" -D "$D/pg/data" -m fast -w stop; fi >/dev/null
fi
for pid in "$D"/slurmd-*.pid "$D/slurmctld.pid" "$D/munged.pid"; do
  [ -f "$pid" ] || continue
  p=$(cat "$pid")
  $SUDO kill "$p" 2>/dev/null
  for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  $SUDO kill -9 "$p" 2>/dev/null
  rm -f "$pid"
done
echo "cluster-down: stopped (logs in $D)"
