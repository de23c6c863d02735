#!/usr/bin/env bash
# Turn a fresh Raspberry Pi OS Lite (bookworm) into an Earwitness field node.
#
#   sudo bash deploy/provision-node.sh --node-id north-01 --server tcp://server.example.org:5555
#
# Safe to run again (idempotent): packages, user, directories, venv, configs and
# units are brought to the wanted state. An existing /etc/earwitness/node.toml, and
# installed gpsd, chrony and config.txt settings that differ from what this run
# would write (edited by hand), are kept, each with a note, unless --force-config
# is given. Run with --help for the options, or --print-config to see the node
# config it would write (no root, no changes).
#
# The file edits are functions (edit_*), and nothing runs when the script is
# sourced, so tests can call them on scratch files. EARWITNESS_ROOT (tests only)
# prefixes every path the script reads or writes on the system, so a whole run can
# be rehearsed in a scratch directory with stand-ins for apt-get, systemctl & co.
set -euo pipefail

R="${EARWITNESS_ROOT:-}"

PREFIX=/opt/earwitness
VENV="$PREFIX/venv"
ETC=/etc/earwitness
DATA=/var/lib/earwitness
USER_NAME=earwitness
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SRC="$(cd "$HERE/.." && pwd)"

NODE_ID=""
SERVER=""
AUDIO_DEVICE="auto"
TIMEBASE="system"
CREDENTIALS=""
READ_ONLY_ROOT=0
FORCE_CONFIG=0
PRINT_CONFIG=0
ASSUME_YES=0
PI_MODE="auto"
WITH_GPSPIPE=0
PPS_GPIO=18
GPS_DEVICE=/dev/ttyAMA0
NMEA_OFFSET=0.5

usage() {
    cat <<'EOF'
usage: sudo bash deploy/provision-node.sh [options]

  --node-id ID          this node's id (letters, digits, . _ -; e.g. north-01)
  --server ENDPOINT     the server's address, e.g. tcp://server.example.org:5555
  --source DIR          the Earwitness source tree to install (default: this checkout)
  --audio-device NAME   PortAudio input device (substring of its name, e.g. hw:1,0 or
                        "USB Audio"); default: the first USB capture card found
  --timebase MODE       system (chrony-disciplined clock, default) or pps-audio (GPS
                        PPS wired into the sound card's second input channel)
  --credentials FILE    the file written by `earwitness keys enroll ID --server ... --out FILE`
                        on the server; its [security] keys go into node.toml
  --pps-gpio N          the GPIO (BCM number) the GPS PPS is wired to (default 18;
                        4 for the Adafruit Ultimate GPS HAT)
  --gps-device DEV      the GPS receiver's serial port for gpsd (default /dev/ttyAMA0;
                        a Pi 5 may need another /dev/ttyAMA*)
  --nmea-offset S       chrony's offset for gpsd's NMEA time, in seconds (default 0.5)
  --read-only-root      make the root filesystem read-only (overlayfs; see docs)
  --force-config        rewrite /etc/earwitness/node.toml even if it exists (its
                        [security] keys are kept), and replace /etc/default/gpsd,
                        /etc/chrony/conf.d/earwitness.conf and the config.txt block
                        even where their settings were edited by hand
  --with-gpspipe        also install gpsd-clients (gpspipe; pulls GUI libraries)
  --not-a-pi            skip the Raspberry Pi boot configuration (UART, PPS overlay)
  --yes                 never ask; fail if something required is missing
  --print-config        print the node.toml that would be written, then exit
  -h, --help            this text
EOF
}

die() { echo "provision-node: $*" >&2; exit 1; }
say() { echo "==> $*"; }

parse_args() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --node-id) NODE_ID="${2-}"; shift 2 ;;
            --server) SERVER="${2-}"; shift 2 ;;
            --source) SRC="${2-}"; shift 2 ;;
            --audio-device) AUDIO_DEVICE="${2-}"; shift 2 ;;
            --timebase) TIMEBASE="${2-}"; shift 2 ;;
            --pps-gpio) PPS_GPIO="${2-}"; shift 2 ;;
            --gps-device) GPS_DEVICE="${2-}"; shift 2 ;;
            --nmea-offset) NMEA_OFFSET="${2-}"; shift 2 ;;
            --credentials) CREDENTIALS="${2-}"; shift 2 ;;
            --read-only-root) READ_ONLY_ROOT=1; shift ;;
            --force-config) FORCE_CONFIG=1; shift ;;
            --with-gpspipe) WITH_GPSPIPE=1; shift ;;
            --not-a-pi) PI_MODE="no"; shift ;;
            --yes|-y) ASSUME_YES=1; shift ;;
            --print-config) PRINT_CONFIG=1; shift ;;
            -h|--help) usage; exit 0 ;;
            *) usage >&2; die "unknown option '$1'" ;;
        esac
    done
}

ask() {  # ask VAR OPTION "question": prompt on a terminal unless --yes
    local var="$1" option="$2" question="$3" answer
    if [ -n "${!var}" ]; then return 0; fi
    if [ "$ASSUME_YES" = 1 ] || [ ! -t 0 ]; then
        die "missing $option; see --help"
    fi
    read -r -p "$question " answer
    printf -v "$var" '%s' "$answer"
}

validate() {
    [[ "$NODE_ID" =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$ ]] ||
        die "node id '$NODE_ID' is invalid: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
    [[ "$SERVER" =~ ^tcp://[^[:space:]/]+:[0-9]{1,5}$ ]] ||
        die "server '$SERVER' is invalid: give tcp://HOST:PORT, e.g. tcp://server.example.org:5555"
    case "$TIMEBASE" in
        system|pps-audio) ;;
        *) die "--timebase must be 'system' or 'pps-audio', not '$TIMEBASE'" ;;
    esac
    [[ "$AUDIO_DEVICE" != *[\\\"]* ]] ||
        die "--audio-device must not contain quotes or backslashes"
    if ! [[ "$PPS_GPIO" =~ ^[0-9]{1,2}$ ]] || [ "$((10#$PPS_GPIO))" -gt 27 ]; then
        die "--pps-gpio must be a GPIO number from 0 to 27 (BCM numbering: 18 = pin 12), not '$PPS_GPIO'"
    fi
    PPS_GPIO="$((10#$PPS_GPIO))"
    [[ "$GPS_DEVICE" =~ ^/dev/[A-Za-z0-9._/-]+$ ]] ||
        die "--gps-device must be a device path such as /dev/ttyAMA0, not '$GPS_DEVICE'"
    [[ "$NMEA_OFFSET" =~ ^-?([0-9]+(\.[0-9]*)?|\.[0-9]+)$ ]] ||
        die "--nmea-offset must be a number of seconds such as 0.5, not '$NMEA_OFFSET'"
}

detect_audio_device() {  # first USB capture card → hw:N,0 (PortAudio's name contains "(hw:N,0)")
    local card
    card="$(arecord -l 2>/dev/null | awk '/^card [0-9]+:/ && /USB/ { sub(":", "", $2); print $2; exit }')" || true
    if [ -n "$card" ]; then
        echo "hw:$card,0"
    else
        echo "hw:1,0"
    fi
}

node_config() {  # the node.toml for NODE_ID / SERVER / AUDIO_DEVICE / TIMEBASE
    local channels=1
    if [ "$TIMEBASE" = "pps-audio" ]; then channels=2; fi
    cat <<EOF
# Earwitness field node configuration (written by deploy/provision-node.sh).
# Reference: common/config.py (NodeConfig). Restart after editing:
#   sudo systemctl restart earwitness-node

[node]
id = "$NODE_ID"
server = "$SERVER"
# Unacknowledged events survive restarts here.
outbox_path = "$DATA/outbox.sqlite"

# A position surveyed by other means (RTK, a survey marker) overrides the GPS
# survey-in. WGS84 degrees and metres above the ellipsoid.
# [node.position]
# lat = 0.0
# lon = 0.0
# alt = 0.0

[audio]
source = "sounddevice"
# A substring of the PortAudio device name: "hw:N,0" from 'arecord -l', or the
# card's name. List them with: $VENV/bin/python -m sounddevice
device = "$AUDIO_DEVICE"
sample_rate = 48000
# Channel 0: microphone. With timebase "pps-audio", channel 1 carries the GPS PPS.
channels = $channels
mic_channel = 0

[timebase]
# "system": the chrony-disciplined clock (GPS PPS via /dev/pps0);
# "pps-audio": PPS pulses recorded in input channel pps_channel (most accurate).
mode = "$TIMEBASE"
pps_channel = 1

[gps]
host = "127.0.0.1"
port = 2947
# Average fixes this long (s) for the node's position, then alert when the fixes
# stay more than move_alert_m (m) away from it.
survey_s = 600.0
move_alert_m = 25.0
EOF
}

# A "[security]" table header, also with a comment after it ("[security]  # from ...").
SECURITY_RE='^[[:space:]]*\[[[:space:]]*security[[:space:]]*\][[:space:]]*(#.*)?$'

security_block() {  # security_block FILE: the [security] table of FILE (an enrolment file, a node.toml)
    awk -v re="$SECURITY_RE" '$0 ~ re { on = 1; print; next }
         /^[[:space:]]*\[/ { on = 0 }
         on { print }' "$1"
}

has_security() {  # has_security FILE: FILE has a [security] table
    grep -Eq "$SECURITY_RE" "$1"
}

check_node_config() {  # check_node_config FILE [NAME]: FILE loads with the project's config loader
    # (common.config.load_node_config, in the installed venv); if not, the reason on
    # stderr, naming the file NAME.
    [ -x "$R$VENV/bin/python" ] || die "no $R$VENV/bin/python to check $1 with: the Python environment is missing; run this script again"
    "$R$VENV/bin/python" -c '
import sys
from common.config import ConfigError, load_node_config
try:
    load_node_config(sys.argv[1])
except ConfigError as exc:
    sys.exit(str(exc).replace(sys.argv[1], sys.argv[2]))
' "$1" "${2:-$1}"
}

check_credentials() {  # check_credentials FILE: an enrolment file for NODE_ID
    local file="$1" cred_id
    [ -r "$file" ] || die "cannot read credentials file $file"
    has_security "$file" ||
        die "$file has no [security] table: give the file written by 'earwitness keys enroll ... --out FILE'"
    cred_id="$(sed -n 's/^id *= *"\(.*\)" *$/\1/p' "$file" | head -n1)"
    [ -z "$cred_id" ] || [ "$cred_id" = "$NODE_ID" ] ||
        die "$file is for node '$cred_id', not '$NODE_ID'"
}

# ------------------------------------------------------------------ file edits
edit_security() {  # edit_security CONFIG CREDENTIALS: replace CONFIG's [security] table
    # The result is written to a temporary file and replaces CONFIG only if it loads
    # (check_node_config); otherwise CONFIG is left as it was and the script stops.
    local config="$1" creds="$2" tmp
    tmp="$(mktemp "$(dirname "$config")/.edit.XXXXXX")"
    awk -v re="$SECURITY_RE" '$0 ~ re { skip = 1; next } /^[[:space:]]*\[/ { skip = 0 } !skip { print }' \
        "$config" > "$tmp"
    # drop trailing blank lines, then one blank line and the new table
    sed -i -e ':a' -e '/^\n*$/{$d;N;ba' -e '}' "$tmp"
    { echo; security_block "$creds"; } >> "$tmp"
    chown --reference="$config" "$tmp" 2>/dev/null || true
    chmod --reference="$config" "$tmp"
    if ! check_node_config "$tmp" "$config"; then
        rm -f "$tmp"
        die "$config would not load with the keys from $creds (message above); it was left unchanged"
    fi
    mv -f "$tmp" "$config"
}

settings() {  # settings FILE: FILE without comments and blank lines (what takes effect)
    grep -Ev '^[[:space:]]*(#|$)' "$1" || true
}

render() {  # render FILE: a config file from deploy/ with this run's --pps-gpio, --gps-device, --nmea-offset
    sed -E -e "s/gpiopin=18\b/gpiopin=$PPS_GPIO/g" -e "s/GPIO18\b/GPIO$PPS_GPIO/g" \
        -e "s|^DEVICES=.*|DEVICES=\"$GPS_DEVICE /dev/pps0\"|" \
        -e "s/^(refclock SHM 0 .*offset )[^[:space:]]+/\1$NMEA_OFFSET/" "$1"
}

keep_note() {  # keep_note FILE: say that FILE's hand-edited settings are kept
    say "keeping $1: its settings differ from what this run would write (edited by hand?); give them as options (--pps-gpio, --gps-device, --nmea-offset) or add --force-config to replace it"
}

install_config() {  # install_config SRC DEST: install "render SRC" as DEST (mode 0644)
    # A DEST installed by this script earlier (it names provision-node.sh) whose
    # settings differ from the rendered ones was edited by hand: it is kept, with a
    # note, unless --force-config. Any other DEST is replaced.
    local src="$1" dest="$2" tmp
    tmp="$(mktemp)"
    render "$src" > "$tmp"
    if [ -f "$dest" ] && [ "$FORCE_CONFIG" != 1 ] && grep -qs 'provision-node\.sh' "$dest" &&
            [ "$(settings "$dest")" != "$(settings "$tmp")" ]; then
        keep_note "$dest"
    else
        install -m 0644 "$tmp" "$dest"
    fi
    rm -f "$tmp"
}

marker_block() {  # marker_block FILE: FILE's "# >>> earwitness >>>" block, if any
    awk '/^# >>> earwitness >>>/ { on = 1 } on { print } /^# <<< earwitness <<</ { on = 0 }' "$1"
}

edit_marker_block() {  # edit_marker_block FILE SNIPPET: (re)place the "# >>> earwitness >>>" block
    local file="$1" snippet="$2" tmp
    [ "$(grep -c '^# >>> earwitness >>>' "$file")" = "$(grep -c '^# <<< earwitness <<<' "$file")" ] ||
        die "$file has a '# >>> earwitness >>>' line without its '# <<< earwitness <<<' (or the other way round); mend it by hand and run again"
    tmp="$(mktemp)"
    awk '/^# >>> earwitness >>>/ { skip = 1 } !skip { print } /^# <<< earwitness <<</ { skip = 0 }' \
        "$file" > "$tmp"
    cat "$snippet" >> "$tmp"
    cat "$tmp" > "$file"
    rm -f "$tmp"
}

edit_cmdline() {  # edit_cmdline FILE: drop the serial console (it would fight gpsd for the UART)
    sed -i -E -e 's/[[:space:]]*console=(serial0|ttyAMA0|ttyS0),[0-9]+//g' -e 's/^[[:space:]]+//' "$1"
}

edit_fstab() {  # edit_fstab FILE: noatime on /, /tmp in RAM
    local file="$1" tmp
    if awk '$1 !~ /^#/ && $2 == "/" && $4 !~ /noatime/ { found = 1 } END { exit !found }' "$file"; then
        tmp="$(mktemp)"
        awk 'BEGIN { OFS = "\t" } $1 !~ /^#/ && $2 == "/" && $4 !~ /noatime/ { $4 = $4 ",noatime" } { print }' \
            "$file" > "$tmp"
        cat "$tmp" > "$file"
        rm -f "$tmp"
    fi
    if ! awk '$1 !~ /^#/ && $2 == "/tmp" { found = 1 } END { exit !found }' "$file"; then
        echo "tmpfs /tmp tmpfs defaults,noatime,nosuid,nodev,mode=1777,size=64M 0 0" >> "$file"
    fi
}

write_journald_dropin() {  # write_journald_dropin FILE
    cat > "$1" <<'EOF'
# Earwitness node: keep the journal in RAM (lost at reboot) to spare the SD card.
# For logs across reboots use Storage=persistent with SystemMaxUse=100M.
[Journal]
Storage=volatile
RuntimeMaxUse=64M
EOF
}

# ------------------------------------------------------------------ steps
install_packages() {
    say "installing packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    local pkgs=(python3-venv python3-pip libportaudio2 alsa-utils gpsd gpsd-tools chrony pps-tools)
    if [ "$WITH_GPSPIPE" = 1 ]; then pkgs+=(gpsd-clients); fi
    apt-get install -y -q --no-install-recommends "${pkgs[@]}"
}

make_user_and_dirs() {
    say "user $USER_NAME and directories"
    if ! id "$USER_NAME" >/dev/null 2>&1; then
        useradd --system --user-group --home-dir "$DATA" --no-create-home \
            --shell /usr/sbin/nologin "$USER_NAME"
    fi
    usermod -a -G audio "$USER_NAME"
    install -d -o root -g "$USER_NAME" -m 0750 "$R$ETC"
    install -d -o "$USER_NAME" -g "$USER_NAME" -m 0750 "$R$DATA"
    install -d -o root -g root -m 0755 "$R$PREFIX" "$R/usr/share/doc/earwitness"
}

install_venv() {
    say "Python environment in $VENV (from $SRC)"
    [ -x "$R$VENV/bin/python" ] || python3 -m venv "$R$VENV"
    "$R$VENV/bin/pip" install -q --disable-pip-version-check "${SRC}[audio]"
    # The version number may not change between checkouts: always reinstall our code.
    "$R$VENV/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps "$SRC"
    if [ -f "$SRC/docs/node-setup.md" ]; then
        install -m 0644 "$SRC/docs/node-setup.md" "$R/usr/share/doc/earwitness/"
    fi
}

write_node_config() {
    local cfg="$R$ETC/node.toml" tmp
    if [ ! -f "$cfg" ] || [ "$FORCE_CONFIG" = 1 ]; then
        say "writing $cfg"
        tmp="$(mktemp "$R$ETC/.node.toml.XXXXXX")"
        node_config > "$tmp"
        if [ -f "$cfg" ] && [ -z "$CREDENTIALS" ] && has_security "$cfg"; then
            say "keeping the [security] keys of the existing $cfg"
            { echo; security_block "$cfg"; } >> "$tmp"
        fi
        chown root:"$USER_NAME" "$tmp"
        chmod 0640 "$tmp"
        if ! check_node_config "$tmp" "$cfg"; then
            rm -f "$tmp"
            die "the new $cfg would not load (message above); the existing file was left unchanged"
        fi
        mv -f "$tmp" "$cfg"
    else
        say "keeping existing $cfg (--force-config rewrites it)"
    fi
    if [ -n "$CREDENTIALS" ]; then
        say "putting the node's keys ([security]) into $cfg"
        edit_security "$cfg" "$CREDENTIALS"
    fi
    chown root:"$USER_NAME" "$cfg"
    chmod 0640 "$cfg"   # it holds the node's secret key
    check_node_config "$cfg" || die "$cfg does not load (message above); fix it and run again"
}

configure_gpsd_chrony() {
    say "gpsd and chrony configuration"
    if [ ! -f "$R/etc/default/gpsd.orig" ] && [ -f "$R/etc/default/gpsd" ]; then
        cp -p "$R/etc/default/gpsd" "$R/etc/default/gpsd.orig"
    fi
    install -d -m 0755 "$R/etc/default" "$R/etc/chrony/conf.d"
    install_config "$HERE/gpsd/gpsd.default" "$R/etc/default/gpsd"
    install_config "$HERE/chrony/earwitness.conf" "$R/etc/chrony/conf.d/earwitness.conf"
    if ! grep -Eqs '^[[:space:]]*confdir[[:space:]]+/etc/chrony/conf.d' "$R/etc/chrony/chrony.conf"; then
        if [ -f "$R/etc/chrony/chrony.conf" ] && [ ! -f "$R/etc/chrony/chrony.conf.earwitness-orig" ]; then
            cp -p "$R/etc/chrony/chrony.conf" "$R/etc/chrony/chrony.conf.earwitness-orig"
        fi
        echo "confdir /etc/chrony/conf.d" >> "$R/etc/chrony/chrony.conf"
    fi
}

configure_pi_boot() {
    if [ "$PI_MODE" != "yes" ]; then
        say "not a Raspberry Pi (or --not-a-pi): skipping the boot configuration; see deploy/pi/config.txt"
        return 0
    fi
    say "Raspberry Pi boot configuration (UART, PPS on GPIO$PPS_GPIO)"
    local boot="$R/boot/firmware" block old
    [ -f "$boot/config.txt" ] || boot="$R/boot"
    [ -f "$boot/config.txt" ] || die "no config.txt in /boot/firmware or /boot"
    [ -f "$boot/config.txt.earwitness-orig" ] || cp -p "$boot/config.txt" "$boot/config.txt.earwitness-orig"
    block="$(mktemp)"
    render "$HERE/pi/config.txt" > "$block"
    old="$(marker_block "$boot/config.txt")"
    if [ -n "$old" ] && [ "$FORCE_CONFIG" != 1 ] &&
            [ "$(settings <(printf '%s\n' "$old"))" != "$(settings "$block")" ]; then
        keep_note "the '# >>> earwitness >>>' block in $boot/config.txt"
    else
        edit_marker_block "$boot/config.txt" "$block"
    fi
    rm -f "$block"
    if [ -f "$boot/cmdline.txt" ]; then
        [ -f "$boot/cmdline.txt.earwitness-orig" ] || cp -p "$boot/cmdline.txt" "$boot/cmdline.txt.earwitness-orig"
        edit_cmdline "$boot/cmdline.txt"
    fi
    systemctl disable --now hciuart.service >/dev/null 2>&1 || true
}

protect_sd_card() {
    say "SD-card wear protection"
    install -d -m 0755 "$R/etc/systemd/journald.conf.d"
    write_journald_dropin "$R/etc/systemd/journald.conf.d/earwitness.conf"
    [ -f "$R/etc/fstab.earwitness-orig" ] || cp -p "$R/etc/fstab" "$R/etc/fstab.earwitness-orig"
    edit_fstab "$R/etc/fstab"
    # No swap file on the SD card when there is RAM enough (≥ 1 GB).
    local mem_kb
    mem_kb="$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)"
    if command -v dphys-swapfile >/dev/null 2>&1 && [ "${mem_kb:-0}" -ge 900000 ]; then
        dphys-swapfile swapoff >/dev/null 2>&1 || true
        dphys-swapfile uninstall >/dev/null 2>&1 || true
        systemctl disable dphys-swapfile.service >/dev/null 2>&1 || true
    fi
}

install_units() {
    say "systemd units"
    install -d -m 0755 "$R/etc/systemd/system"
    install -m 0644 "$HERE/systemd/earwitness-node.service" "$R/etc/systemd/system/earwitness-node.service"
    systemctl daemon-reload
    systemctl enable gpsd.service chrony.service earwitness-node.service
    systemctl restart gpsd.service chrony.service || true
    systemctl restart earwitness-node.service || true
}

read_only_root() {
    if command -v raspi-config >/dev/null 2>&1; then
        say "enabling the read-only root (overlayfs) — takes effect at the next reboot"
        raspi-config nonint do_overlayfs 0
    else
        echo "warning: raspi-config not found; --read-only-root skipped" >&2
    fi
}

system_options() {  # the --pps-gpio/--gps-device/--nmea-offset options of this run that are not the defaults
    [ "$PPS_GPIO" = 18 ] || printf ' --pps-gpio %s' "$PPS_GPIO"
    [ "$GPS_DEVICE" = /dev/ttyAMA0 ] || printf ' --gps-device %s' "$GPS_DEVICE"
    [ "$NMEA_OFFSET" = 0.5 ] || printf ' --nmea-offset %s' "$NMEA_OFFSET"
}

print_next_steps() {
    cat <<EOF

Earwitness node '$NODE_ID' is provisioned. Reboot now (sudo reboot) so the UART and
PPS overlays take effect, then check, in this order:

  ls -l /dev/pps0 $GPS_DEVICE          both exist
  sudo ppstest /dev/pps0                one line per second (Ctrl-C to stop)
  cgps -s                               a 3-D fix ('gpspipe -w' with --with-gpspipe)
  chronyc sources -v                    '#* GPS' selected, NMEA within ~0.4 s
  chronyc tracking                      Reference ID ... (GPS), Leap status Normal
  arecord -l                            the USB sound card ([audio] device = $AUDIO_DEVICE)
  journalctl -u earwitness-node -f      heartbeats sent, no repeated errors

Keys: on the server run
  sudo -u earwitness $VENV/bin/earwitness keys enroll $NODE_ID --server $SERVER --out /tmp/$NODE_ID.toml
copy that file here over a secure channel and run
  sudo bash $0 --node-id $NODE_ID --server $SERVER$(system_options) --credentials /tmp/$NODE_ID.toml
then delete both copies. Full guide: /usr/share/doc/earwitness/node-setup.md
EOF
}

main() {
    parse_args "$@"
    if [ "$PRINT_CONFIG" = 1 ]; then
        [ -n "$NODE_ID" ] || NODE_ID="node-01"
        [ -n "$SERVER" ] || SERVER="tcp://127.0.0.1:5555"
        [ "$AUDIO_DEVICE" != "auto" ] || AUDIO_DEVICE="hw:1,0"
        validate
        if [ -n "$CREDENTIALS" ]; then
            check_credentials "$CREDENTIALS"
            node_config
            echo
            security_block "$CREDENTIALS"
        else
            node_config
        fi
        return 0
    fi

    [ "$(id -u)" = 0 ] || die "run as root: sudo bash $0 ..."
    [ -f "$SRC/pyproject.toml" ] || die "no pyproject.toml in $SRC: give the Earwitness source tree with --source DIR"
    if [ -r /etc/os-release ]; then
        # shellcheck disable=SC1091
        . /etc/os-release
        [ "${VERSION_CODENAME:-}" = "bookworm" ] ||
            echo "warning: made for Raspberry Pi OS / Debian bookworm; this is ${PRETTY_NAME:-unknown}" >&2
    fi
    if [ "$PI_MODE" = "auto" ]; then
        if grep -qs "Raspberry Pi" "$R/proc/device-tree/model"; then PI_MODE="yes"; else PI_MODE="no"; fi
    fi
    ask NODE_ID --node-id "Node id (e.g. north-01):"
    ask SERVER --server "Server address (e.g. tcp://server.example.org:5555):"
    validate
    if [ -n "$CREDENTIALS" ]; then check_credentials "$CREDENTIALS"; fi

    install_packages
    if [ "$AUDIO_DEVICE" = "auto" ]; then
        AUDIO_DEVICE="$(detect_audio_device)"
        say "audio device: $AUDIO_DEVICE (check with 'arecord -l'; [audio] device in $ETC/node.toml)"
    fi
    validate
    make_user_and_dirs
    install_venv
    write_node_config
    configure_gpsd_chrony
    configure_pi_boot
    protect_sd_card
    install_units
    if [ "$READ_ONLY_ROOT" = 1 ]; then read_only_root; fi
    print_next_steps
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    main "$@"
fi
