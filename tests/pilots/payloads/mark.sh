#!/bin/sh
# Records each execution in $P3S_EXEC_LOG: "<tag> start|end <epoch s> <pilot> <slurm job> <pid>",
# sleeping $P3S_SLEEP seconds between; with P3S_DQM=NAME it runs that DQM payload in between
# (products in $P3S_OUTPUT_DIR), so a killed execution writes no product.
set -eu
line() { echo "${P3S_TAG:-job} $1 $(date +%s.%N) ${P3S_PILOT_NAME:-none} ${SLURM_JOB_ID:-none} $$" >> "$P3S_EXEC_LOG"; }
line start
sleep "${P3S_SLEEP:-0}"
if [ -n "${P3S_DQM:-}" ]; then
  "${P3S_PYTHON:-python3}" -m p3s.payloads run "$P3S_DQM" "$P3S_INPUT_FILE" "$P3S_OUTPUT_DIR" --events 1
fi
line end
