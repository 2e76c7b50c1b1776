#!/usr/bin/env bash
# One command that runs the whole test suite against real services: it installs what is
# missing, makes sure the machine's PostgreSQL runs, and refuses a run that collected no test.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh

# PostgreSQL is a service of this kind of machine; start it if something stopped it.
if command -v pg_lsclusters >/dev/null && ! pg_lsclusters -h 2>/dev/null | grep -q online; then
  echo "==> starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
fi
# Redis (the production server's messaging) likewise; it keeps nothing on disk.
if command -v redis-server >/dev/null && ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "==> starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
fi

# One pytest run; collecting no test at all is a failure here.
run_pytest() {
  local rc=0
  .venv/bin/python -m pytest "$@" || rc=$?
  if [ "$rc" -eq 5 ]; then
    echo "pytest collected no test: that is a failure here" >&2
    rc=1
  fi
  return "$rc"
}

# With arguments: exactly what is asked. Without: the default suite; the pilots' forked engine
# per run (the default is shared; marked fork_engine: the local-pilot behaviour tests run again
# on it); the
# fault suite (tests/faults, marked faults: it breaks a system of its own on purpose and writes
# its report to test-artifacts/faults-report.md); each a pytest run of its own.
if [ "$#" -gt 0 ]; then
  rc=0
  run_pytest "$@" || rc=$?
  exit "$rc"
fi
rc=0
run_pytest -m "not faults and not fork_engine" || rc=$?
echo "==> the pilots' forked engine per run (tests/pilots, -m fork_engine)"
run_pytest -m fork_engine tests/pilots || rc=$?
echo "==> the fault suite (tests/faults)"
faults_rc=0
run_pytest -m faults tests/faults || faults_rc=$?
if [ "$rc" -ne 0 ]; then exit "$rc"; fi
exit "$faults_rc"
