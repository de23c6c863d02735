#!/usr/bin/env bash
# Set up the Earwitness central server on Debian 12 (bookworm) or a derivative.
#
#   sudo bash deploy/provision-server.sh --public-endpoint tcp://server.example.org:5555
#
# Idempotent: safe to run again after pulling a new version. An existing
# /etc/earwitness/server.toml and an existing server key are kept. Nothing runs
# when the script is sourced (tests call its functions). EARWITNESS_ROOT (tests
# only) prefixes every path the script reads or writes on the system.
set -euo pipefail

R="${EARWITNESS_ROOT:-}"

PREFIX=/opt/earwitness
VENV="$PREFIX/venv"
ETC=/etc/earwitness
KEYS="$ETC/keys"
DATA=/var/lib/earwitness
USER_NAME=earwitness
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SRC="$(cd "$HERE/.." && pwd)"

BIND="tcp://0.0.0.0:5555"
PUBLISH="tcp://127.0.0.1:5556"
PUBLIC_ENDPOINT=""
FORCE_CONFIG=0
PRINT_CONFIG=0

usage() {
    cat <<'EOF'
usage: sudo bash deploy/provision-server.sh [options]

  --public-endpoint E   the address nodes connect to, e.g. tcp://server.example.org:5555
                        (only used in the printed enrolment command)
  --bind ENDPOINT       where the server listens for nodes (default tcp://0.0.0.0:5555)
  --publish ENDPOINT    where it publishes located shots (default tcp://127.0.0.1:5556)
  --source DIR          the Earwitness source tree to install (default: this checkout)
  --force-config        rewrite /etc/earwitness/server.toml even if it exists
  --print-config        print the server.toml that would be written, then exit
  -h, --help            this text
EOF
}

die() { echo "provision-server: $*" >&2; exit 1; }
say() { echo "==> $*"; }

parse_args() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --public-endpoint) PUBLIC_ENDPOINT="${2-}"; shift 2 ;;
            --bind) BIND="${2-}"; shift 2 ;;
            --publish) PUBLISH="${2-}"; shift 2 ;;
            --source) SRC="${2-}"; shift 2 ;;
            --force-config) FORCE_CONFIG=1; shift ;;
            --print-config) PRINT_CONFIG=1; shift ;;
            -h|--help) usage; exit 0 ;;
            *) usage >&2; die "unknown option '$1'" ;;
        esac
    done
}

validate() {
    local e
    for e in "$BIND" "$PUBLISH"; do
        [[ "$e" =~ ^tcp://[^[:space:]/\"]+:[0-9]{1,5}$ ]] ||
            die "endpoint '$e' is invalid: give tcp://HOST:PORT, e.g. tcp://0.0.0.0:5555"
    done
    if [ -n "$PUBLIC_ENDPOINT" ]; then
        [[ "$PUBLIC_ENDPOINT" =~ ^tcp://[^[:space:]/\"]+:[0-9]{1,5}$ ]] ||
            die "--public-endpoint '$PUBLIC_ENDPOINT' is invalid: give tcp://HOST:PORT"
    fi
}

server_config() {
    cat <<EOF
# Earwitness server configuration (written by deploy/provision-server.sh).
# Reference: common/config.py (ServerConfig). Restart after editing:
#   sudo systemctl restart earwitness-server

[server]
# Nodes connect here (open this TCP port in the firewall).
bind = "$BIND"
# Located shots are published here (ZeroMQ PUB) for dashboards and alerting.
publish = "$PUBLISH"
database = "$DATA/earwitness.sqlite"
# CURVE keys and the node allow-list ('earwitness keys ...').
keys_dir = "$KEYS"
EOF
}

install_packages() {
    say "installing packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends python3-venv python3-pip chrony sqlite3
}

make_user_and_dirs() {
    say "user $USER_NAME and directories"
    if ! id "$USER_NAME" >/dev/null 2>&1; then
        useradd --system --user-group --home-dir "$DATA" --no-create-home \
            --shell /usr/sbin/nologin "$USER_NAME"
    fi
    install -d -o root -g "$USER_NAME" -m 0750 "$R$ETC"
    # The server (running as earwitness) reads its secret key from here.
    install -d -o "$USER_NAME" -g "$USER_NAME" -m 0700 "$R$KEYS"
    install -d -o "$USER_NAME" -g "$USER_NAME" -m 0750 "$R$DATA"
    install -d -o root -g root -m 0755 "$R$PREFIX" "$R/usr/share/doc/earwitness"
}

install_venv() {
    say "Python environment in $VENV (from $SRC)"
    [ -x "$R$VENV/bin/python" ] || python3 -m venv "$R$VENV"
    "$R$VENV/bin/pip" install -q --disable-pip-version-check "$SRC"
    "$R$VENV/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps "$SRC"
    if [ -f "$SRC/docs/node-setup.md" ]; then
        install -m 0644 "$SRC/docs/node-setup.md" "$R/usr/share/doc/earwitness/"
    fi
}

write_server_config() {
    local cfg="$R$ETC/server.toml" tmp
    if [ ! -f "$cfg" ] || [ "$FORCE_CONFIG" = 1 ]; then
        say "writing $cfg"
        tmp="$(mktemp "$R$ETC/.server.toml.XXXXXX")"
        server_config > "$tmp"
        mv -f "$tmp" "$cfg"
    else
        say "keeping existing $cfg (--force-config rewrites it)"
    fi
    chown root:"$USER_NAME" "$cfg"
    chmod 0640 "$cfg"
    "$R$VENV/bin/python" -c 'import sys; from common.config import load_server_config; load_server_config(sys.argv[1])' "$cfg" ||
        die "$cfg does not load (message above); fix it and run again"
}

make_server_key() {
    if [ -f "$R$KEYS/server.key_secret" ]; then
        say "keeping the existing server key in $KEYS"
    else
        say "creating the server key in $KEYS"
        runuser -u "$USER_NAME" -- "$R$VENV/bin/earwitness" keys init-server --dir "$R$KEYS"
    fi
}

install_units() {
    say "systemd unit"
    install -d -m 0755 "$R/etc/systemd/system"
    install -m 0644 "$HERE/systemd/earwitness-server.service" "$R/etc/systemd/system/earwitness-server.service"
    systemctl daemon-reload
    systemctl enable chrony.service earwitness-server.service
    systemctl restart earwitness-server.service || true
    if command -v ufw >/dev/null 2>&1 && ufw status 2>/dev/null | grep -q "Status: active"; then
        local port="${BIND##*:}"
        say "opening TCP port $port in ufw"
        ufw allow "$port/tcp"
    fi
}

print_next_steps() {
    local endpoint="${PUBLIC_ENDPOINT:-tcp://THIS-SERVER:${BIND##*:}}"
    cat <<EOF

Earwitness server is provisioned. Check:

  systemctl status earwitness-server
  journalctl -u earwitness-server -f        heartbeats from nodes appear here
  chronyc tracking                          the server's clock is synchronised

Enrol each node (its id must match the node's [node] id):

  sudo -u $USER_NAME $VENV/bin/earwitness keys enroll NODE_ID --server $endpoint --out /tmp/NODE_ID.toml
  sudo -u $USER_NAME $VENV/bin/earwitness keys list --dir $KEYS
  sudo -u $USER_NAME $VENV/bin/earwitness keys revoke NODE_ID --dir $KEYS

Copy /tmp/NODE_ID.toml to the node over a secure channel (it holds the node's
secret key), install it there with provision-node.sh --credentials, delete it here.
Guide: /usr/share/doc/earwitness/node-setup.md
EOF
}

main() {
    parse_args "$@"
    validate
    if [ "$PRINT_CONFIG" = 1 ]; then
        server_config
        return 0
    fi
    [ "$(id -u)" = 0 ] || die "run as root: sudo bash $0 ..."
    [ -f "$SRC/pyproject.toml" ] || die "no pyproject.toml in $SRC: give the Earwitness source tree with --source DIR"
    install_packages
    make_user_and_dirs
    install_venv
    write_server_config
    make_server_key
    install_units
    print_next_steps
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    main "$@"
fi
