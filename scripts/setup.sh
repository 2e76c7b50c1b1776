#!/usr/bin/env bash
# One command on a fresh machine: install everything, then bring the embedded system up
# (Prefect server on SQLite under .p3s/, the work pool, the deployments, a worker).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
exec .venv/bin/p3s up
