#!/system/bin/sh
# edgecompress device-side runner: one trial of a benchmark program, pinned to a CPU set.
#
#   sh run_bench.sh ROUNDS CPU_MASK PROGRAM [ARG...]
#
# Runs PROGRAM ARG... ROUNDS times in a row under `taskset CPU_MASK` (CPU_MASK "-" = no
# pinning) and prints one parseable block:
#
#   @@EC_THERMAL <zone> <type> <millidegrees>      one line per thermal zone, before the runs
#   @@EC_ROUND <i>                                 then the program's own output (stdout+stderr)
#   @@EC_ROUND_END <i> <exit code>
#   @@EC_SUMMARY rounds=<done> failed=<0|1> mask=<mask>
#
# It stops at the first failing round. POSIX sh only (Android's toybox sh, dash, busybox).
# The host quotes every argument; nothing here is eval'd.

rounds=$1
mask=$2
shift 2
if [ -z "$rounds" ] || [ $# -lt 1 ]; then
    echo "@@EC_ERROR usage: run_bench.sh ROUNDS CPU_MASK PROGRAM [ARG...]"
    exit 64
fi
if [ ! -x "$1" ]; then
    echo "@@EC_ERROR program not found or not executable: $1"
    exit 127
fi
if [ "$mask" != "-" ] && ! command -v taskset >/dev/null 2>&1; then
    echo "@@EC_ERROR taskset is missing on this device; cannot pin to CPU mask $mask"
    exit 127
fi

for zone in /sys/class/thermal/thermal_zone*; do
    [ -r "$zone/temp" ] || continue
    echo "@@EC_THERMAL ${zone##*/} $(cat "$zone/type" 2>/dev/null | tr ' ' '_') $(cat "$zone/temp" 2>/dev/null)"
done

i=1
failed=0
while [ "$i" -le "$rounds" ]; do
    echo "@@EC_ROUND $i"
    if [ "$mask" = "-" ]; then
        "$@" 2>&1
    else
        taskset "$mask" "$@" 2>&1
    fi
    rc=$?
    echo "@@EC_ROUND_END $i $rc"
    if [ "$rc" -ne 0 ]; then
        failed=1
        break
    fi
    i=$((i + 1))
done
echo "@@EC_SUMMARY rounds=$((i - 1)) failed=$failed mask=$mask"
exit $failed
