#!/usr/bin/env bash
# A real one-node SLURM cluster on loopback for the tests: munge, MariaDB (socket only), slurmdbd,
# slurmctld, slurmd (Debian 12's SLURM 22.05), run as root without systemd or cgroups.
#
#   bash .ci/slurm_cluster.sh up       install (apt) if needed, configure, start; idempotent
#   bash .ci/slurm_cluster.sh down     stop only the daemons this script started (by their pid files)
#   bash .ci/slurm_cluster.sh status   sinfo, or exit 1 when no cluster answers
#
# Accounting (slurmdbd + MariaDB) is required: snakemake-executor-plugin-slurm polls job states with
# sacct, and without accounting it silently loses its jobs (see ../shared/docs/FACTS.md).
set -euo pipefail

STATE=/run/snakescope-slurm          # our pid files (munged and slurmdbd need dirs of their own users)
declare -A PIDFILE=([slurmd]=$STATE/slurmd.pid [slurmctld]=$STATE/slurmctld.pid [slurmdbd]=/run/slurmdbd/slurmdbd.pid
                    [mariadbd]=/run/mysqld/snakescope-mariadbd.pid [munged]=/run/munge/munged.pid)
CONF=/etc/slurm
DB_PASS=snakescope-slurmdbd
HOST=$(hostname -s)

log() { echo "[slurm-cluster] $*"; }

answers() { timeout 5 sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; }

install_packages() {
  local need=()
  for bin in slurmctld slurmd sinfo munged slurmdbd mariadbd; do command -v "$bin" >/dev/null || need+=("$bin"); done
  [ ${#need[@]} -eq 0 ] && return
  log "installing Debian packages (missing: ${need[*]})"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge slurmdbd mariadb-server >/dev/null
}

start_daemon() {  # name, pidfile, command...
  local name=$1 pidfile=$2; shift 2
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then return; fi
  log "starting $name"
  "$@"
}

wait_for() {  # description, seconds, test command...
  local what=$1 seconds=$2; shift 2
  for _ in $(seq $((seconds * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  log "ERROR: $what did not come up within ${seconds}s"; return 1
}

write_configs() {
  local mem cpus
  cpus=$(nproc)
  mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  mem=$((mem * 9 / 10))
  mkdir -p "$CONF" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm "$STATE"
  cat > "$CONF/slurm.conf" <<EOF
# written by snakescope .ci/slurm_cluster.sh: one node on loopback
ClusterName=snakescope
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none
MinJobAge=600
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP DefMemPerCPU=1000
EOF
  cat > "$CONF/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=slurm
PidFile=${PIDFILE[slurmdbd]}
LogFile=/var/log/slurm/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
  chown slurm:slurm "$CONF/slurmdbd.conf" /var/log/slurm
  chmod 600 "$CONF/slurmdbd.conf"
  touch /var/log/slurm/slurmdbd.log && chown slurm:slurm /var/log/slurm/slurmdbd.log
  mkdir -p /run/slurmdbd && chown slurm:slurm /run/slurmdbd
}

up() {
  if answers; then log "a cluster already answers:"; sinfo; return; fi
  install_packages
  write_configs
  mkdir -p /run/munge /run/mysqld && chown munge:munge /run/munge && chown mysql:mysql /run/mysqld
  start_daemon munged "${PIDFILE[munged]}" runuser -u munge -- /usr/sbin/munged --pid-file="${PIDFILE[munged]}"
  wait_for munge 10 munge -n
  if ! mariadb --socket=/run/mysqld/mysqld.sock -e 'select 1' >/dev/null 2>&1; then
    log "starting mariadbd (socket only)"
    rm -f /run/mysqld/mysqld.sock
    (setsid mariadbd --user=mysql --skip-networking --socket=/run/mysqld/mysqld.sock --pid-file="${PIDFILE[mariadbd]}" \
      </dev/null >/var/log/slurm/mariadbd.log 2>&1 &)
    wait_for mariadb 30 mariadb --socket=/run/mysqld/mysqld.sock -e 'select 1'
  fi
  mariadb --socket=/run/mysqld/mysqld.sock <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF
  start_daemon slurmdbd "${PIDFILE[slurmdbd]}" slurmdbd
  wait_for slurmdbd 30 bash -c "sacctmgr -n show cluster >/dev/null 2>&1 || ss -ltn | grep -q ':6819 '"
  start_daemon slurmctld "$STATE/slurmctld.pid" slurmctld
  wait_for slurmctld 30 scontrol ping
  start_daemon slurmd "$STATE/slurmd.pid" slurmd
  wait_for "an idle node" 60 answers || { scontrol update nodename="$HOST" state=resume || true; wait_for "an idle node" 30 answers; }
  wait_for "accounting (sacct)" 30 sacct -n -X -S now
  log "cluster up:"; sinfo
}

down() {
  for name in slurmd slurmctld slurmdbd mariadbd munged; do
    local pidfile=${PIDFILE[$name]}
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      log "stopping $name ($(cat "$pidfile"))"
      kill "$(cat "$pidfile")" || true
      for _ in $(seq 50); do kill -0 "$(cat "$pidfile")" 2>/dev/null || break; sleep 0.2; done
    fi
    rm -f "$pidfile"
  done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) answers && sinfo ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
