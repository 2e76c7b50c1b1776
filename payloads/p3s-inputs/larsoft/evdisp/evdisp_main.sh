#!/bin/sh
# Stand-in for p3s's /afs/.../p3s/inputs/larsoft/evdisp/evdisp_main.sh (a LArSoft event display):
# runs the evdisplay DQM payload on the job's input file instead.
#   P3S_INPUT_FILE  raw file: absolute, or relative to P3S_INPUT_DIR
#   P3S_NEVENTS     events to display (default 5)
#   P3S_EVDISP_DIR  outbox if set, else P3S_OUTPUT_DIR; products go under run/subrun/evdisplay
#   P3S_PYTHON      Python that has p3s (default python3)
# The LArSoft settings (DUNETPCVER, P3S_LAR_SETUP, P3S_FCL, ...) are ignored.
set -eu
me="evdisp_main.sh"
die() {
    printf '%s: %s\n' "$me" "$1" >&2
    exit 2
}

[ -n "${P3S_INPUT_FILE:-}" ] || die "P3S_INPUT_FILE is not set"
case "$P3S_INPUT_FILE" in
    /*) input="$P3S_INPUT_FILE" ;;
    *)
        [ -n "${P3S_INPUT_DIR:-}" ] || die "P3S_INPUT_FILE is relative and P3S_INPUT_DIR is not set"
        input="${P3S_INPUT_DIR%/}/$P3S_INPUT_FILE"
        ;;
esac
if [ -n "${P3S_EVDISP_DIR:-}" ]; then
    outbox="$P3S_EVDISP_DIR"
elif [ -n "${P3S_OUTPUT_DIR:-}" ]; then
    outbox="$P3S_OUTPUT_DIR"
else
    die "neither P3S_EVDISP_DIR nor P3S_OUTPUT_DIR is set"
fi
events="${P3S_NEVENTS:-5}"

printf '%s: input %s\n' "$me" "$input"
printf '%s: outbox %s (%s events)\n' "$me" "$outbox" "$events"
exec "${P3S_PYTHON:-python3}" -m p3s.payloads run evdisplay "$input" "$outbox" --events "$events"
