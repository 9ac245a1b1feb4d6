#!/usr/bin/env bash
# Remove pi-edge-agent's service and program; run it as root. Running it again is harmless.
#
#   sudo deploy/uninstall.sh           # stop, disable, remove the unit and /opt/edge-agent;
#                                      # keep the config, the state (buffer, seq counters),
#                                      # the user edge-agent and local drop-ins
#   sudo deploy/uninstall.sh --purge   # also /etc/edge-agent, /var/lib/edge-agent, the
#                                      # drop-ins, the udev rules and the user and group
#
# The gpio and i2c groups stay: other software uses them.
set -euo pipefail

UNIT_NAME=edge-agent.service
SERVICE_USER=edge-agent

die() {
    echo "uninstall.sh: $*" >&2
    exit 1
}
say() { echo "==> $*"; }

PURGE=0
while [ $# -gt 0 ]; do
    case "$1" in
    --purge) PURGE=1; shift ;;
    -h | --help) sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (only --purge)" ;;
    esac
done
[ "$(id -u)" = 0 ] || die "run me as root (sudo $0 ...)"

if [ -d /run/systemd/system ]; then
    if systemctl is-active --quiet "$UNIT_NAME" || systemctl is-failed --quiet "$UNIT_NAME"; then
        say "stopping $UNIT_NAME"
        systemctl stop "$UNIT_NAME" || true
    fi
    systemctl reset-failed "$UNIT_NAME" 2>/dev/null || true
fi
if [ -f "/etc/systemd/system/$UNIT_NAME" ]; then
    systemctl disable --quiet "$UNIT_NAME" 2>/dev/null || true
    say "removing /etc/systemd/system/$UNIT_NAME"
    rm -f "/etc/systemd/system/$UNIT_NAME"
fi
if [ "$PURGE" = 1 ]; then
    rm -rf "/etc/systemd/system/$UNIT_NAME.d"
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi

if [ -d /opt/edge-agent ]; then
    say "removing /opt/edge-agent"
    rm -rf /opt/edge-agent
fi

if [ "$PURGE" = 0 ]; then
    for kept in /etc/edge-agent /var/lib/edge-agent "/etc/systemd/system/$UNIT_NAME.d"; do
        [ ! -e "$kept" ] || say "keeping $kept (--purge removes it)"
    done
    exit 0
fi

say "purging config, state, udev rules and the user $SERVICE_USER"
rm -rf /etc/edge-agent /var/lib/edge-agent /var/lib/private/edge-agent
rm -f /etc/udev/rules.d/60-edge-agent.rules
if getent passwd "$SERVICE_USER" >/dev/null; then
    userdel "$SERVICE_USER"
fi
if getent group "$SERVICE_USER" >/dev/null; then
    groupdel "$SERVICE_USER"
fi
say "done"
