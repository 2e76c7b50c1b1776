#!/bin/sh
# Never ends, and ignores SIGTERM, so that only SIGKILL stops it; records its pid first.
trap '' TERM
echo $$ > "$P3S_PID_FILE"
while true; do sleep 1; done
