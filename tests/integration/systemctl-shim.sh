#!/usr/bin/env bash
# A stand-in for systemctl in the `run` integration test, where no systemd
# is PID 1: units are the commands in KRAKEN_SHIM_<unit> (dots and dashes as
# underscores), run as background processes whose pids live in
# KRAKEN_SHIM_DIR. Real systemd is exercised by the VM tests.
set -u
dir=${KRAKEN_SHIM_DIR:?KRAKEN_SHIM_DIR is not set}
echo "$*" >>"$dir/calls.log"
args=()
for a in "$@"; do
    case $a in --*) ;; *) args+=("$a") ;; esac
done
cmd=${args[0]:-}
unit=${args[1]:-}
pidfile="$dir/$unit.pid"

alive() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

start() {
    alive && return 0
    local var="KRAKEN_SHIM_${unit//[.-]/_}"
    local command=${!var:-}
    [ -n "$command" ] || { echo "Unit $unit not found." >&2; exit 5; }
    # Services get their own environment from systemd, not the caller's:
    # above all not its NOTIFY_SOCKET (Consul and Nomad speak sd_notify too).
    env -u NOTIFY_SOCKET -u WATCHDOG_USEC -u WATCHDOG_PID setsid bash -c "exec $command" >>"$dir/$unit.log" 2>&1 </dev/null &
    echo $! >"$pidfile"
}

stop() {
    alive || return 0
    kill "$(cat "$pidfile")"
    for _ in $(seq 100); do alive || return 0; sleep 0.1; done
    kill -9 "$(cat "$pidfile")"
}

# A command that fails once: the file fail-once-<command>-<unit> in the
# shim's directory is consumed by the first such call, which then fails as
# systemctl does when a job cannot be queued.
once="$dir/fail-once-$cmd-$unit"
if [ -n "$unit" ] && [ -f "$once" ]; then
    rm -f "$once"
    echo "Job for $unit failed (systemctl-shim: fail-once)." >&2
    exit 1
fi

case $cmd in
    show)
        case "$*" in
            *MainPID*) if alive; then cat "$pidfile"; else echo 0; fi ;;
            *) echo no ;;
        esac ;;
    daemon-reload | enable) ;;
    start) start ;;
    restart) stop; start ;;
    stop) stop ;;
    reload) alive && kill -HUP "$(cat "$pidfile")" ;;
    is-active)
        if alive; then echo active; else echo inactive; exit 3; fi ;;
    is-enabled) echo enabled ;;
    *) echo "systemctl-shim: unsupported: $*" >&2; exit 1 ;;
esac
