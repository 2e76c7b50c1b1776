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

set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no test: that is a failure here" >&2
  exit 1
fi
exit "$rc"
