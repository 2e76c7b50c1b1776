#!/bin/sh
# Stand-in for p3s's /afs/.../p3s/inputs/larsoft/monitor/monitor_main.sh (LArSoft raw TPC
# monitor): runs the tpc_monitor DQM payload on the job's input file instead.
#   P3S_DATA         data area; the folders below, when relative, are relative to it
#   P3S_INPUT_DIR    folder of the input (used when P3S_INPUT_FILE is relative)
#   P3S_INPUT_FILE   raw file: absolute, or relative to P3S_INPUT_DIR
#   P3S_MONITOR_DIR  outbox (else P3S_OUTPUT_DIR); products go under run/subrun/tpc_monitor
#   P3S_NEVENTS      events to analyse (default: all)
#   P3S_PYTHON       Python that has p3s (default python3)
# The LArSoft and ROOT settings (DUNETPCVER, P3S_FCL, ROOT_MACRO_NAME, P3S_XRD_URI, ...) are
# ignored, and the input is left where it is (P3S_USED_DIR is not used).
set -eu
me="monitor_main.sh"
die() {
    printf '%s: %s\n' "$me" "$1" >&2
    exit 2
}

# in_data NAME VALUE: VALUE if absolute, else P3S_DATA/VALUE (without a trailing slash).
in_data() {
    case "$2" in
        /*) dir="$2" ;;
        *)
            [ -n "${P3S_DATA:-}" ] || die "$1 is relative ($2) and P3S_DATA is not set"
            dir="${P3S_DATA%/}/$2"
            ;;
    esac
    if [ "$dir" != "/" ]; then
        dir="${dir%/}"
    fi
    printf '%s\n' "$dir"
}

[ -n "${P3S_INPUT_FILE:-}" ] || die "P3S_INPUT_FILE is not set"
case "$P3S_INPUT_FILE" in
    /*) input="$P3S_INPUT_FILE" ;;
    *)
        [ -n "${P3S_INPUT_DIR:-}" ] || die "P3S_INPUT_FILE is relative and P3S_INPUT_DIR is not set"
        input_dir="$(in_data P3S_INPUT_DIR "$P3S_INPUT_DIR")"
        input="${input_dir%/}/$P3S_INPUT_FILE"
        ;;
esac
if [ -n "${P3S_MONITOR_DIR:-}" ]; then
    outbox="$(in_data P3S_MONITOR_DIR "$P3S_MONITOR_DIR")"
elif [ -n "${P3S_OUTPUT_DIR:-}" ]; then
    outbox="$(in_data P3S_OUTPUT_DIR "$P3S_OUTPUT_DIR")"
else
    die "neither P3S_MONITOR_DIR nor P3S_OUTPUT_DIR is set"
fi

set -- run tpc_monitor "$input" "$outbox"
if [ -n "${P3S_NEVENTS:-}" ]; then
    set -- "$@" --events "$P3S_NEVENTS"
fi
printf '%s: input %s\n' "$me" "$input"
printf '%s: outbox %s (%s events)\n' "$me" "$outbox" "${P3S_NEVENTS:-all}"
exec "${P3S_PYTHON:-python3}" -m p3s.payloads "$@"
