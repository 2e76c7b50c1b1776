#!/usr/bin/env bash
# Installs (Debian's slurm-wlm and munge) and starts a single-node Slurm on this machine, for the
# pilot tests and for a one-machine set-up. Idempotent: a second run only checks that munged,
# slurmctld and slurmd run and that the node is usable. No systemd is assumed: the daemons are
# started by hand, their logs go to /var/log/slurm/.
set -euo pipefail

SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
need=()
for pkg in slurm-wlm munge; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "==> apt-get install ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# munge: the authentication daemon Slurm needs.
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  echo "==> starting munged"
  $SUDO mkdir -p /run/munge
  $SUDO chown munge:munge /run/munge
  $SUDO chmod 755 /run/munge
  [ -f /etc/munge/munge.key ] || $SUDO runuser -u munge -- /usr/sbin/mungekey --create 2>/dev/null \
    || $SUDO /usr/sbin/create-munge-key -f
  $SUDO runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi

HOST=$(hostname -s)
CPUS=$(nproc)
# RealMemory a little under what is free now (MB), so that slurmd accepts the node.
MEM=$(awk '/MemAvailable/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
CONF=/etc/slurm/slurm.conf
$SUDO mkdir -p /etc/slurm /var/spool/slurmd /var/spool/slurmctld /var/log/slurm
if ! grep -q "^NodeName=$HOST " "$CONF" 2>/dev/null || ! grep -q "^# p3s single-node" "$CONF"; then
  echo "==> writing $CONF (node $HOST, $CPUS CPUs, $MEM MB)"
  $SUDO tee "$CONF" >/dev/null <<CONF
# p3s single-node Slurm, written by scripts/slurm.sh
ClusterName=p3s
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=/var/spool/slurmctld
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MinJobAge=30
KillWait=5
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  # A changed configuration needs the daemons restarted.
  for pidfile in /run/slurmd.pid /run/slurmctld.pid; do
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      $SUDO kill "$(cat "$pidfile")"; sleep 1
    fi
  done
fi

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if ! running /run/slurmctld.pid; then
  echo "==> starting slurmctld"
  $SUDO bash -c 'setsid slurmctld -D >>/var/log/slurm/slurmctld.out 2>&1 < /dev/null &'
  for _ in $(seq 50); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
fi
if ! running /run/slurmd.pid; then
  echo "==> starting slurmd"
  $SUDO bash -c 'setsid slurmd -D >>/var/log/slurm/slurmd.out 2>&1 < /dev/null &'
fi
# Wait until the node takes jobs; bring it back if an earlier run left it down or drained.
for _ in $(seq 100); do
  state=$(sinfo -h -N -o '%T' 2>/dev/null | head -1)
  case "$state" in
    idle*|mixed*|allocated*|completing*) break ;;
    down*|drain*) $SUDO scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true ;;
  esac
  sleep 0.2
done
state=$(sinfo -h -N -o '%T' 2>/dev/null | head -1)
case "$state" in
  idle*|mixed*|allocated*|completing*) echo "==> Slurm ready: node $HOST $state" ;;
  *) echo "Slurm did not become ready (node state: ${state:-unknown}); see /var/log/slurm/" >&2; exit 1 ;;
esac
