#!/usr/bin/env bash
# Install (or upgrade in place) pi-edge-agent as the systemd service edge-agent.service,
# on Raspberry Pi OS / Debian 12 (Bookworm). Run it as root; running it again upgrades.
#
#   sudo deploy/install.sh                    # the package from PyPI
#   sudo deploy/install.sh --from .           # from a checkout (a directory with pyproject.toml)
#   sudo deploy/install.sh --wheels DIR       # offline, from a wheelhouse (`pip wheel -w DIR .`)
#   sudo deploy/install.sh --config my.yaml   # also install this config
#   echo "$PW" | sudo deploy/install.sh --mqtt-password-stdin   # write /etc/edge-agent/mqtt.pass
#
# What it does, each step only when needed:
#   1. apt: python3, python3-venv, procps (the unit's ExecReload uses /bin/kill), and
#      python3-lgpio where the archive has it (Raspberry Pi OS: gpiozero's pin library;
#      PyPI has no lgpio wheel for 64-bit ARM, and building one needs a compiler).
#      Nothing is compiled: the agent talks to journald and sd_notify itself.
#   2. groups gpio and i2c (created when absent, with udev rules giving them
#      /dev/gpiochip*, /dev/gpiomem and /dev/i2c-*), the system user and group edge-agent.
#   3. a venv at /opt/edge-agent/venv (--system-site-packages, to see python3-lgpio), and
#      pi-edge-agent installed or upgraded in it.
#   4. /etc/edge-agent/mqtt.pass (0640 root:edge-agent) from standard input with
#      --mqtt-password-stdin; an existing one is checked (not empty) and given that owner
#      and mode (the agent refuses a password file that others can read).
#      /etc/edge-agent/config.yaml (0640 root:edge-agent): --config FILE, or, only when
#      there is none yet, a minimal config that publishes the Pi's own health to an MQTT
#      broker on localhost. An existing config is never overwritten without --config.
#   5. `edge-agent check` of that config as the service user, before it replaces the old
#      one: on an error, stop here with its status (78), changing nothing.
#   6. the unit in /etc/systemd/system, enable it, then start it (or restart it, to run
#      the upgraded code); --no-start only enables it.
set -euo pipefail

PREFIX=/opt/edge-agent
VENV=$PREFIX/venv
CONFIG_DIR=/etc/edge-agent
CONFIG=$CONFIG_DIR/config.yaml
UNIT_NAME=edge-agent.service
UNIT_DEST=/etc/systemd/system/$UNIT_NAME
UDEV_RULES=/etc/udev/rules.d/60-edge-agent.rules
SERVICE_USER=edge-agent
STATE_DIR=/var/lib/edge-agent
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

usage() {
    sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    cat <<'EOF'

Options:
  --from DIR       install from a source checkout instead of PyPI
  --wheels DIR     install offline from this wheelhouse (no index); with --from, the
                   wheelhouse must also hold the build requirements (setuptools, wheel)
  --version SPEC   a version from PyPI or the wheelhouse, e.g. 0.2.0 (default: the newest)
  --config FILE    install FILE as /etc/edge-agent/config.yaml (a different existing one
                   is kept as config.yaml.bak-TIME)
  --mqtt-password-stdin
                   read the MQTT password (one line) from standard input and write it to
                   /etc/edge-agent/mqtt.pass, 0640 root:edge-agent (use it with
                   `password_file: mqtt.pass` under mqtt:)
  --no-apt         never call apt-get (fail if a Debian package is missing)
  --no-start       enable the service but do not start or restart it
  -h, --help       this text
EOF
}

# setup_password_file FILE GROUP [PASSWORD]: write PASSWORD (when given) to FILE, then check
# an existing FILE: not empty, 0640 root:GROUP (fixed when not). The agent refuses a
# password file that others can read or that is empty.
setup_password_file() {
    local file=$1 group=$2 password=${3:-} staged
    if [ -n "$password" ]; then
        say "writing $file (0640 root:$group)"
        staged=$(mktemp "$(dirname "$file")/.mqtt.pass.XXXXXX") # mktemp makes it 0600
        printf '%s\n' "$password" >"$staged"
        chown "root:$group" "$staged"
        chmod 0640 "$staged"
        mv -f "$staged" "$file"
    fi
    [ -e "$file" ] || return 0
    [ -f "$file" ] || die "$file is not a regular file"
    grep -q '[^[:space:]]' "$file" || die "$file is empty: write the password into it, or use --mqtt-password-stdin"
    if [ "$(stat -c '%U:%G %a' "$file")" != "root:$group 640" ]; then
        say "$file was $(stat -c '%U:%G %a' "$file"): making it 0640 root:$group"
        chown "root:$group" "$file"
        chmod 0640 "$file"
    fi
}

die() {
    echo "install.sh: $*" >&2
    exit 1
}
say() { echo "==> $*"; }

FROM=""
WHEELS=""
VERSION=""
NEW_CONFIG=""
PASSWORD_STDIN=0
USE_APT=1
START=1
while [ $# -gt 0 ]; do
    case "$1" in
    --from) FROM=${2:?--from needs a directory}; shift 2 ;;
    --wheels) WHEELS=${2:?--wheels needs a directory}; shift 2 ;;
    --version) VERSION=${2:?--version needs a version}; shift 2 ;;
    --config) NEW_CONFIG=${2:?--config needs a file}; shift 2 ;;
    --mqtt-password-stdin) PASSWORD_STDIN=1; shift ;;
    --no-apt) USE_APT=0; shift ;;
    --no-start) START=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
    esac
done

[ "$(id -u)" = 0 ] || die "run me as root (sudo $0 ...)"
[ -f "$HERE/$UNIT_NAME" ] || die "$HERE/$UNIT_NAME is missing: run me from the deploy/ directory of a checkout or release"
if [ -n "$FROM" ]; then
    [ -f "$FROM/pyproject.toml" ] || die "--from $FROM: no pyproject.toml there"
    FROM=$(cd "$FROM" && pwd)
    [ -z "$VERSION" ] || die "--version makes no sense with --from"
fi
if [ -n "$WHEELS" ]; then
    [ -d "$WHEELS" ] || die "--wheels $WHEELS: not a directory"
    WHEELS=$(cd "$WHEELS" && pwd)
fi
if [ -n "$NEW_CONFIG" ]; then
    [ -f "$NEW_CONFIG" ] || die "--config $NEW_CONFIG: no such file"
fi
MQTT_PASSWORD=""
if [ "$PASSWORD_STDIN" = 1 ]; then
    # Read before anything else runs: apt-get would swallow standard input.
    IFS= read -r MQTT_PASSWORD || true
    MQTT_PASSWORD=${MQTT_PASSWORD%$'\r'}
    [ -n "$MQTT_PASSWORD" ] || die "--mqtt-password-stdin: standard input held no password"
fi

# -- 1. Debian packages ------------------------------------------------------------------
installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }
has_candidate() {
    local policy
    policy=$(apt-cache policy "$1" 2>/dev/null) || return 1
    [[ $policy == *"Candidate: "[0-9]* ]]
}
missing=()
for pkg in python3 python3-venv procps; do
    installed "$pkg" || missing+=("$pkg")
done
# Optional, seen by the venv through --system-site-packages: python3-cryptography for
# Ed25519-signed commands (HMAC needs nothing), python3-lgpio for real pins (Raspberry Pi
# OS only; Debian does not package it). An offline machine installs without them.
optional=()
installed python3-cryptography || optional+=(python3-cryptography)
if ! installed python3-lgpio && has_candidate python3-lgpio; then
    optional+=(python3-lgpio)
fi
if [ ${#missing[@]} -gt 0 ]; then
    [ "$USE_APT" = 1 ] || die "missing Debian packages: ${missing[*]} (and --no-apt)"
    say "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if [ "$USE_APT" = 1 ] && [ ${#optional[@]} -gt 0 ]; then
    say "installing optional Debian packages: ${optional[*]}"
    [ ${#missing[@]} -gt 0 ] || apt-get update -qq || true
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${optional[@]}"; then
        say "warning: could not install ${optional[*]}: Ed25519 keys need python3-cryptography, real GPIO pins python3-lgpio; install them later with apt-get"
    fi
fi

# -- 2. groups, udev rules and the service user --------------------------------------------
created_groups=()
for group in gpio i2c; do
    if ! getent group "$group" >/dev/null; then
        say "creating group $group"
        groupadd --system "$group"
        created_groups+=("$group")
    fi
done
# Raspberry Pi OS gives the gpio and i2c groups their devices (99-com.rules); Debian on a
# Pi does not. Add rules only where udev runs and no other rule names these groups.
if command -v udevadm >/dev/null && {
    [ -f "$UDEV_RULES" ] \
        || ! grep -qs 'GROUP="gpio"' /etc/udev/rules.d/*.rules /lib/udev/rules.d/*.rules /usr/lib/udev/rules.d/*.rules
}; then
    say "udev rules: $UDEV_RULES"
    install -d -m 0755 "$(dirname "$UDEV_RULES")"
    cat >"$UDEV_RULES" <<'EOF'
# Installed by pi-edge-agent's install.sh: members of gpio and i2c may use these devices.
SUBSYSTEM=="gpio", KERNEL=="gpiochip*", GROUP="gpio", MODE="0660"
KERNEL=="gpiomem*", GROUP="gpio", MODE="0660"
SUBSYSTEM=="i2c-dev", GROUP="i2c", MODE="0660"
EOF
    if [ -S /run/udev/control ]; then
        udevadm control --reload || true
        udevadm trigger --subsystem-match=gpio --subsystem-match=i2c-dev --subsystem-match=bcm2835-gpiomem || true
    fi
fi
if ! getent group "$SERVICE_USER" >/dev/null; then
    groupadd --system "$SERVICE_USER"
fi
if ! getent passwd "$SERVICE_USER" >/dev/null; then
    say "creating system user $SERVICE_USER"
    useradd --system --gid "$SERVICE_USER" --groups gpio,i2c --home-dir "$STATE_DIR" \
        --no-create-home --shell /usr/sbin/nologin --comment "pi-edge-agent" "$SERVICE_USER"
else
    usermod --append --groups gpio,i2c "$SERVICE_USER"
fi

# -- 3. the venv and the package -----------------------------------------------------------
if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -c "" 2>/dev/null; then
    say "$VENV is broken (Python upgraded?): recreating it"
    rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    install -d -m 0755 "$PREFIX"
    python3 -m venv --system-site-packages "$VENV"
fi
pip=("$VENV/bin/pip" install --quiet --disable-pip-version-check --upgrade)
if [ -n "$WHEELS" ]; then
    pip+=(--no-index --find-links "$WHEELS")
fi
if [ -n "$FROM" ]; then
    # Build from a copy: pip builds in the source tree, which may be read-only or
    # belong to someone else, and .venv/.git are no business of the build.
    target=$(mktemp -d)
    trap 'rm -rf "$target"' EXIT
    tar -C "$FROM" --exclude=./.venv --exclude=./.git --exclude=./build --exclude='*.egg-info' \
        --exclude=__pycache__ -cf - . | tar -C "$target" -xf -
elif [ -n "$VERSION" ]; then
    target="pi-edge-agent==$VERSION"
else
    target=pi-edge-agent
fi
say "installing $target into $VENV"
"${pip[@]}" "$target"
if [ -n "$FROM" ] || [ -n "$WHEELS" ]; then
    # Same version number, new code (a checkout, a rebuilt wheel): reinstall the package
    # itself; its dependencies were upgraded above only where needed.
    "${pip[@]}" --force-reinstall --no-deps "$target"
fi
"$VENV/bin/edge-agent" --version

# -- 4. + 5. the config, checked as the service user before it is put in place -----------
install -d -m 0755 -o root -g root "$CONFIG_DIR"
setup_password_file "$CONFIG_DIR/mqtt.pass" "$SERVICE_USER" "$MQTT_PASSWORD"
if [ -f "$HERE/../config/example.yaml" ]; then
    install -m 0644 -o root -g root "$HERE/../config/example.yaml" "$CONFIG_DIR/example.yaml"
fi
candidate=""
if [ -n "$NEW_CONFIG" ]; then
    candidate=$NEW_CONFIG
elif [ ! -f "$CONFIG" ]; then
    say "writing a minimal $CONFIG (edit it, then: sudo systemctl reload edge-agent)"
    candidate=$(mktemp)
    cat >"$candidate" <<'EOF'
# pi-edge-agent config (written by install.sh). Every option, with its default and what
# it does: /etc/edge-agent/example.yaml; every driver's options: `edge-agent drivers`.
# Check a change with `edge-agent check -c /etc/edge-agent/config.yaml`,
# then apply it with `sudo systemctl reload edge-agent`.
#
# device_id defaults to the hostname; the base topic is edge/<device_id>.
mqtt:
  host: localhost              # your broker
  # port: 1883
  # username: ...
  # password_file: mqtt.pass   # relative to this file; chmod 0640, group edge-agent
sensors:
  pi:                          # the Pi's own health: SoC temperature, load, memory, disk
    driver: system
    interval: 60s
EOF
fi
check() {
    say "edge-agent check -c $1"
    runuser -u "$SERVICE_USER" -- "$VENV/bin/edge-agent" check -c "$1"
}
status=0
if [ -n "$candidate" ]; then
    # Checked where it will live (relative paths such as password_file resolve there),
    # with the permissions it will have, and only then moved over the old one.
    staged="$CONFIG_DIR/.config.yaml.new"
    install -m 0640 -o root -g "$SERVICE_USER" "$candidate" "$staged"
    [ "$candidate" = "$NEW_CONFIG" ] || rm -f "$candidate"
    check "$staged" || status=$?
    if [ "$status" = 0 ]; then
        if [ -f "$CONFIG" ] && ! cmp -s "$staged" "$CONFIG"; then
            backup="$CONFIG.bak-$(date +%Y%m%d-%H%M%S)"
            say "keeping the old config as $backup"
            cp -p "$CONFIG" "$backup"
        fi
        mv -f "$staged" "$CONFIG"
    else
        rm -f "$staged"
    fi
else
    say "keeping $CONFIG"
    chgrp "$SERVICE_USER" "$CONFIG"
    chmod g+r,o-rwx "$CONFIG"
    check "$CONFIG" || status=$?
fi
if [ "$status" != 0 ]; then
    echo "install.sh: the config has errors (above): fix them and run me again; $CONFIG and the service were left as they were" >&2
    exit "$status"
fi

# -- 6. the unit ---------------------------------------------------------------------------
install -m 0644 -o root -g root "$HERE/$UNIT_NAME" "$UNIT_DEST"
if [ ! -d /run/systemd/system ]; then
    systemctl enable "$UNIT_NAME" >/dev/null 2>&1 || true
    say "systemd is not running here: $UNIT_NAME is installed and enabled, not started"
    exit 0
fi
systemctl daemon-reload
systemctl enable --quiet "$UNIT_NAME"
if [ "$START" = 0 ]; then
    say "installed and enabled; start it with: sudo systemctl start edge-agent"
    exit 0
fi
if systemctl is-active --quiet "$UNIT_NAME"; then
    say "restarting $UNIT_NAME"
    action=restart
else
    say "starting $UNIT_NAME"
    action=start
fi
if ! systemctl "$action" "$UNIT_NAME"; then
    journalctl -u "$UNIT_NAME" -n 30 --no-pager >&2 || true
    die "$UNIT_NAME did not start (journal above)"
fi
systemctl --no-pager --lines=0 status "$UNIT_NAME" || true
say "done: journalctl -u edge-agent -f shows its log"
