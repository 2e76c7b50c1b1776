#!/usr/bin/env bash
# One command on a fresh machine: install everything, bring the embedded system up (Prefect
# server on SQLite under .p3s/, the work pool, the deployments, a worker, the inbox watcher),
# then drop a simulated run into the inbox: event triggers run every DQM flow on it.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
.venv/bin/p3s up
exec .venv/bin/p3s demo
