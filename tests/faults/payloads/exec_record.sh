#!/bin/sh
# Records each execution of a fault-suite job in $P3S_EXEC_LOG, one line per step:
# "<job uuid> start|end <epoch s> <pid>", sleeping $P3S_SLEEP seconds between; a killed
# execution leaves a start without an end.
set -eu
line() { echo "$P3S_JOB_UUID $1 $(date +%s.%N) $$" >> "$P3S_EXEC_LOG"; }
line start
sleep "${P3S_SLEEP:-0}"
line end
