"""deploy/: systemd units, chrony/gpsd/Pi configs, provisioning scripts, node-setup docs."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from common.config import load_node_config, load_server_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
UNITS = {"node": DEPLOY / "systemd" / "earwitness-node.service",
         "server": DEPLOY / "systemd" / "earwitness-server.service"}
SCRIPTS = [DEPLOY / "provision-node.sh", DEPLOY / "provision-server.sh"]
BASH = shutil.which("bash")


def need_bash() -> str:
    if BASH is None:
        pytest.skip("bash not installed")
    return BASH


def unit(name: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=True, interpolation=None, delimiters=("=",))
    cp.optionxform = str   # keys are case-sensitive
    cp.read_string(UNITS[name].read_text())
    return cp


# ------------------------------------------------------------------ units
@pytest.mark.parametrize("name", ["node", "server"])
def test_units_have_the_required_settings(name):
    u = unit(name)
    s = u["Service"]
    assert s["User"] == "earwitness" and s["Group"] == "earwitness"
    assert s["ExecStart"] == (f"/opt/earwitness/venv/bin/earwitness {name} "
                              f"--config /etc/earwitness/{name}.toml")
    assert s["Restart"] == "always" and float(s["RestartSec"]) > 0
    assert u["Unit"]["StartLimitIntervalSec"] == "0"
    for key, value in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                       ("PrivateTmp", "yes"), ("ReadWritePaths", "/var/lib/earwitness"),
                       ("StandardOutput", "journal"), ("StandardError", "journal"),
                       ("CapabilityBoundingSet", "")]:
        assert s[key] == value, key
    assert u["Install"]["WantedBy"] == "multi-user.target"
    assert "network-online.target" in u["Unit"]["After"]


def test_node_unit_can_use_the_sound_card_and_gpsd():
    u = unit("node")
    s = u["Service"]
    assert s["SupplementaryGroups"] == "audio"
    assert "char-alsa" in s["DeviceAllow"]
    assert "PrivateDevices" not in s                 # would hide /dev/snd
    assert "MemoryDenyWriteExecute" not in s         # would break cffi audio callbacks
    assert "gpsd.service" in u["Unit"]["After"] and "chrony.service" in u["Unit"]["After"]
    assert "AF_INET" in s["RestrictAddressFamilies"]  # gpsd, chronyd and the server are reached over IP


def test_systemd_analyze_verify(tmp_path):
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze not installed (Debian: apt-get install systemd)")
    # The venv does not exist here: verify copies whose ExecStart is /bin/true …
    for path in UNITS.values():
        text = re.sub(r"(?m)^ExecStart=.*$", "ExecStart=/bin/true", path.read_text())
        (tmp_path / path.name).write_text(text)
    r = subprocess.run([exe, "verify", *(str(tmp_path / p.name) for p in UNITS.values())],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr
    # … and the real files, where the only complaint allowed is the missing binary.
    r = subprocess.run([exe, "verify", *map(str, UNITS.values())], capture_output=True, text=True,
                       timeout=60)
    other = [ln for ln in r.stderr.splitlines()
             if ln.strip() and "/opt/earwitness/venv/bin/earwitness is not executable" not in ln]
    assert other == [], r.stderr


# ------------------------------------------------------------ gpsd, chrony, Pi
def test_chrony_config_has_pps_locked_to_nmea():
    text = (DEPLOY / "chrony" / "earwitness.conf").read_text()
    lines = [ln.split("#")[0].strip() for ln in text.splitlines()]
    pps = [ln for ln in lines if ln.startswith("refclock PPS")]
    shm = [ln for ln in lines if ln.startswith("refclock SHM")]
    assert len(pps) == 1 and pps[0].startswith("refclock PPS /dev/pps0 lock NMEA refid GPS")
    assert len(shm) == 1 and re.match(r"refclock SHM 0 .*refid NMEA", shm[0]) and "noselect" in shm[0]
    assert any(re.match(r"makestep \S+ \d+$", ln) for ln in lines)


def test_chronyd_accepts_the_config():
    chronyd = shutil.which("chronyd") or ("/usr/sbin/chronyd" if Path("/usr/sbin/chronyd").exists() else None)
    if chronyd is None:
        pytest.skip("chronyd not installed (Debian: apt-get install chrony)")
    # -p: parse the file, print the configuration and exit.
    r = subprocess.run([chronyd, "-p", "-f", str(DEPLOY / "chrony" / "earwitness.conf")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "refclock PPS /dev/pps0" in r.stdout


def test_gpsd_defaults(tmp_path):
    bash = need_bash()
    path = DEPLOY / "gpsd" / "gpsd.default"
    r = subprocess.run([bash, "-c", f'set -eu; . "{path}"; echo "$DEVICES|$GPSD_OPTIONS|$START_DAEMON|$USBAUTO"'],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "/dev/ttyAMA0 /dev/pps0|-n|true|false"


def test_pi_config_snippet():
    text = (DEPLOY / "pi" / "config.txt").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    for needed in ("enable_uart=1", "dtoverlay=pps-gpio,gpiopin=18", "dtoverlay=disable-bt"):
        assert needed in lines
    assert text.startswith("# >>> earwitness >>>") and text.rstrip().endswith("# <<< earwitness <<<")


# ------------------------------------------------------------------ scripts
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse(script):
    r = subprocess.run([need_bash(), "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert script.read_text().startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in script.read_text()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_pass_shellcheck(script):
    sc = shutil.which("shellcheck")
    if sc is None:
        pytest.skip("shellcheck not installed (Debian: apt-get install shellcheck)")
    r = subprocess.run([sc, str(script)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout


def run_script(script: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([need_bash(), str(script), *args], capture_output=True, text=True, timeout=60)


def test_node_script_prints_a_config_that_loads(tmp_path):
    r = run_script(SCRIPTS[0], "--print-config", "--node-id", "north-01",
                   "--server", "tcp://server.example.org:5555", "--audio-device", "USB Audio")
    assert r.returncode == 0, r.stderr
    (tmp_path / "node.toml").write_text(r.stdout)
    cfg = load_node_config(tmp_path / "node.toml")
    assert cfg.id == "north-01" and cfg.server == "tcp://server.example.org:5555"
    assert cfg.audio.source == "sounddevice" and cfg.audio.device == "USB Audio"
    assert cfg.audio.channels == 1 and cfg.timebase.mode == "system"
    assert (cfg.gps.host, cfg.gps.port) == ("127.0.0.1", 2947)
    assert cfg.outbox_path.startswith("/var/lib/earwitness/")

    r = run_script(SCRIPTS[0], "--print-config", "--node-id", "n2", "--timebase", "pps-audio")
    (tmp_path / "pps.toml").write_text(r.stdout)
    cfg = load_node_config(tmp_path / "pps.toml")
    assert cfg.timebase.mode == "pps-audio" and cfg.audio.channels == 2
    assert cfg.timebase.pps_channel == 1 and cfg.audio.mic_channel == 0


def enrolment(node_id: str, server: str) -> str:
    from server.keys import node_config_snippet
    return node_config_snippet(node_id, server, "S" * 40, "P" * 40, "X" * 40)


def test_node_script_takes_the_enrolment_keys(tmp_path):
    creds = tmp_path / "north-01.toml"
    creds.write_text(enrolment("north-01", "tcp://server.example.org:5555"))
    r = run_script(SCRIPTS[0], "--print-config", "--node-id", "north-01",
                   "--server", "tcp://server.example.org:5555", "--credentials", str(creds))
    assert r.returncode == 0, r.stderr
    (tmp_path / "node.toml").write_text(r.stdout)
    cfg = load_node_config(tmp_path / "node.toml")
    assert cfg.security.secret_key == "X" * 40 and cfg.security.server_public_key == "S" * 40
    # credentials for another node are refused
    r = run_script(SCRIPTS[0], "--print-config", "--node-id", "south-02", "--credentials", str(creds))
    assert r.returncode == 1 and "is for node 'north-01', not 'south-02'" in r.stderr


@pytest.mark.parametrize("args, words", [
    (["--node-id", "bad id"], "node id 'bad id' is invalid"),
    (["--server", "server.example.org"], "give tcp://HOST:PORT"),
    (["--timebase", "gps"], "--timebase must be"),
    (["--bogus"], "unknown option '--bogus'"),
    (["--pps-gpio", "40"], "--pps-gpio must be a GPIO number from 0 to 27"),
    (["--pps-gpio", "four"], "--pps-gpio must be a GPIO number from 0 to 27"),
    (["--gps-device", "ttyAMA0"], "--gps-device must be a device path"),
    (["--gps-device", "/dev/tty AMA0"], "--gps-device must be a device path"),
    (["--nmea-offset", "0.5s"], "--nmea-offset must be a number of seconds"),
])
def test_node_script_rejects_bad_input_clearly(args, words):
    r = run_script(SCRIPTS[0], "--print-config", *args)
    assert r.returncode == 1 and words in r.stderr


def test_server_script_prints_a_config_that_loads(tmp_path):
    r = run_script(SCRIPTS[1], "--print-config", "--bind", "tcp://0.0.0.0:6000")
    assert r.returncode == 0, r.stderr
    (tmp_path / "server.toml").write_text(r.stdout)
    cfg = load_server_config(tmp_path / "server.toml")
    assert cfg.bind == "tcp://0.0.0.0:6000" and cfg.keys_dir == "/etc/earwitness/keys"
    assert cfg.database.startswith("/var/lib/earwitness/") and not cfg.allow_plaintext
    r = run_script(SCRIPTS[1], "--print-config", "--bind", "0.0.0.0:6000")
    assert r.returncode == 1 and "give tcp://HOST:PORT" in r.stderr


def source_and_run(script: Path, code: str) -> subprocess.CompletedProcess:
    """Source a provisioning script (which then only defines functions) and run ``code``."""
    return subprocess.run([need_bash(), "-c", f'source "{script}"; {code}'], capture_output=True,
                          text=True, timeout=30)


def test_pi_boot_edits_are_idempotent(tmp_path):
    cfg = tmp_path / "config.txt"
    original = "# stock\ndtparam=audio=on\n[pi4]\narm_boost=1\n"
    cfg.write_text(original)
    cmd = tmp_path / "cmdline.txt"
    cmd.write_text("console=serial0,115200 console=tty1 root=PARTUUID=1234-02 rootwait\n")
    snippet = DEPLOY / "pi" / "config.txt"
    for _ in range(2):
        r = source_and_run(SCRIPTS[0], f'edit_marker_block "{cfg}" "{snippet}"; edit_cmdline "{cmd}"')
        assert r.returncode == 0, r.stderr
    text = cfg.read_text()
    assert text.startswith(original) and text.count("# >>> earwitness >>>") == 1
    assert text.count("dtoverlay=pps-gpio,gpiopin=18") == 1
    assert cmd.read_text() == "console=tty1 root=PARTUUID=1234-02 rootwait\n"


def test_fstab_edit_adds_noatime_and_tmpfs_once(tmp_path):
    fstab = tmp_path / "fstab"
    fstab.write_text("proc /proc proc defaults 0 0\n"
                     "PARTUUID=1234-01 /boot/firmware vfat defaults 0 2\n"
                     "PARTUUID=1234-02 / ext4 defaults 0 1\n"
                     "# PARTUUID=old / ext4 defaults 0 1\n")
    for _ in range(2):
        r = source_and_run(SCRIPTS[0], f'edit_fstab "{fstab}"')
        assert r.returncode == 0, r.stderr
    rows = [ln.split() for ln in fstab.read_text().splitlines() if ln and not ln.startswith("#")]
    root = [r for r in rows if r[1] == "/"]
    assert root == [["PARTUUID=1234-02", "/", "ext4", "defaults,noatime", "0", "1"]]
    assert sum(1 for r in rows if r[1] == "/tmp" and r[2] == "tmpfs") == 1
    assert "# PARTUUID=old / ext4 defaults 0 1" in fstab.read_text()       # comments untouched


def test_security_edit_replaces_the_keys(tmp_path):
    r = run_script(SCRIPTS[0], "--print-config", "--node-id", "north-01")
    node = tmp_path / "node.toml"
    node.write_text(r.stdout)
    old = tmp_path / "old.toml"
    new = tmp_path / "new.toml"
    old.write_text(enrolment("north-01", "tcp://127.0.0.1:5555"))
    new.write_text(enrolment("north-01", "tcp://127.0.0.1:5555").replace("X" * 40, "Y" * 40))
    venv = fake_venv(tmp_path)
    for creds in (old, new, new):
        r = source_and_run(SCRIPTS[0], f'VENV="{venv}"; edit_security "{node}" "{creds}"')
        assert r.returncode == 0, r.stderr
    assert node.read_text().count("[security]") == 1
    cfg = load_node_config(node)
    assert cfg.security.secret_key == "Y" * 40 and cfg.id == "north-01"


def fake_venv(tmp: Path) -> Path:
    """A directory with bin/python = this interpreter with the project importable."""
    import sys
    venv = tmp / "venv"
    (venv / "bin").mkdir(parents=True)
    py = venv / "bin" / "python"
    py.write_text(f'#!/bin/sh\nPYTHONPATH="{ROOT}" exec "{sys.executable}" "$@"\n')
    py.chmod(0o755)
    return venv


def test_security_edit_understands_a_commented_header(tmp_path):
    # The guide's sample node.toml: "[security]            # from 'earwitness keys enroll'"
    r = run_script(SCRIPTS[0], "--print-config", "--node-id", "north-01")
    node = tmp_path / "node.toml"
    node.write_text(r.stdout + '\n[security]            # from \'earwitness keys enroll\'\n'
                    + 'server_public_key = "' + "O" * 40 + '"\npublic_key = "' + "O" * 40
                    + '"\nsecret_key = "' + "O" * 40 + '"\n')
    creds = tmp_path / "creds.toml"
    creds.write_text(enrolment("north-01", "tcp://127.0.0.1:5555"))
    venv = fake_venv(tmp_path)
    for _ in range(2):
        r = source_and_run(SCRIPTS[0], f'VENV="{venv}"; edit_security "{node}" "{creds}"')
        assert r.returncode == 0, r.stderr
    assert node.read_text().count("[security]") == 1
    assert load_node_config(node).security.secret_key == "X" * 40


def test_security_edit_leaves_the_config_alone_if_the_result_does_not_load(tmp_path):
    r = run_script(SCRIPTS[0], "--print-config", "--node-id", "north-01")
    node = tmp_path / "node.toml"
    node.write_text(r.stdout)
    before = node.read_bytes()
    creds = tmp_path / "creds.toml"
    creds.write_text(enrolment("north-01", "tcp://127.0.0.1:5555") + "bogus = 1\n")
    venv = fake_venv(tmp_path)
    r = source_and_run(SCRIPTS[0], f'VENV="{venv}"; edit_security "{node}" "{creds}"')
    assert r.returncode == 1
    assert f"{node}: security: unknown key(s) bogus" in r.stderr      # names node.toml, not a temp file
    assert f"{node} would not load with the keys from {creds}" in r.stderr and "left unchanged" in r.stderr
    assert node.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["creds.toml", "node.toml", "venv"]   # no temp left


def test_journald_dropin_is_volatile(tmp_path):
    out = tmp_path / "j.conf"
    r = source_and_run(SCRIPTS[0], f'write_journald_dropin "{out}"')
    assert r.returncode == 0, r.stderr
    cp = configparser.ConfigParser()
    cp.read_string(out.read_text())
    assert cp["Journal"]["Storage"] == "volatile" and cp["Journal"]["RuntimeMaxUse"]


# ------------------------------------------------------------------ docs
def test_node_setup_doc_links_resolve_and_cover_the_steps():
    doc = ROOT / "docs" / "node-setup.md"
    text = doc.read_text()
    for link in re.findall(r"\]\((?!https?://|#)([^)#\s]+)", text):
        assert (doc.parent / link).resolve().exists(), f"broken link {link}"
    for needed in ("hw/BOM.md", "provision-node.sh", "earwitness keys enroll", "ppstest /dev/pps0",
                   "chronyc sources -v", "chronyc tracking", "gpspipe -w", "arecord -l",
                   "journalctl -u earwitness-node -f", "GPIO18", "Raspberry Pi Imager"):
        assert needed in text, needed
    bom = (ROOT / "hw" / "BOM.md").read_text()
    for needed in ("NEO-M8T", "Adafruit Ultimate GPS", "Zero 2 W", "IP65", "PoE", "approximate"):
        assert needed in bom, needed


# ------------------------------------------------- full rehearsal with stand-ins
STUB_LOG = "stub-calls.log"


def make_stubs(tmp: Path) -> tuple[Path, Path]:
    """A bin directory of stand-ins for the commands that change a real system.

    Each records its arguments in ``tmp/stub-calls.log``. ``python3 -m venv DIR``
    makes a fake venv whose ``python`` is this interpreter with the project on
    PYTHONPATH and whose ``pip`` only records; ``install``/``chown`` drop owners
    (the ``earwitness`` user does not exist here).
    """
    import sys
    bindir = tmp / "stub-bin"
    bindir.mkdir()
    log = tmp / STUB_LOG
    real_install = shutil.which("install")
    assert real_install
    stubs = {
        "apt-get": "",
        "systemctl": "",
        "useradd": "",
        "usermod": "",
        "chown": "",
        "runuser": 'while [ "$1" != "--" ]; do shift; done; shift; exec "$@"',
        "id": '[ "${1-}" = "-u" ] && { echo 0; exit 0; }; exit 0',
        "arecord": "echo 'card 3: Device [USB Audio Device], device 0: USB Audio [USB Audio]'",
        "install": ('args=(); while [ $# -gt 0 ]; do case "$1" in -o|-g) shift 2 ;; '
                    '*) args+=("$1"); shift ;; esac; done; exec ' + real_install + ' "${args[@]}"'),
        "python3": f'''
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
    mkdir -p "$3/bin"
    printf '#!/bin/sh\\necho "pip $*" >> "{log}"\\n' > "$3/bin/pip"
    printf '#!/bin/sh\\nPYTHONPATH="{ROOT}" exec "{sys.executable}" "$@"\\n' > "$3/bin/python"
    printf '#!/bin/sh\\nPYTHONPATH="{ROOT}" exec "{sys.executable}" -c "import sys, earwitness; sys.exit(earwitness.main(sys.argv[1:]))" "$@"\\n' > "$3/bin/earwitness"
    chmod +x "$3/bin/pip" "$3/bin/python" "$3/bin/earwitness"
    exit 0
fi
exec "{sys.executable}" "$@"''',
    }
    for name, body in stubs.items():
        p = bindir / name
        p.write_text(f'#!/usr/bin/env bash\necho "{name} $*" >> "{log}"\n{body}\n')
        p.chmod(0o755)
    return bindir, log


def rehearse(script: Path, root: Path, bindir: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, EARWITNESS_ROOT=str(root), PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run([need_bash(), str(script), *args], capture_output=True, text=True,
                          timeout=120, env=env, stdin=subprocess.DEVNULL)


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_node_provisioning_rehearsal_is_idempotent(tmp_path):
    bindir, log = make_stubs(tmp_path)
    root = pi_root(tmp_path, "Raspberry Pi 4 Model B Rev 1.5",
                   "console=serial0,115200 console=tty1 root=PARTUUID=1234-02 rootwait")
    args = ("--node-id", "north-01", "--server", "tcp://server.example.org:5555", "--yes")

    r1 = rehearse(SCRIPTS[0], root, bindir, *args)
    assert r1.returncode == 0, r1.stderr + r1.stdout
    first = tree(root)
    r2 = rehearse(SCRIPTS[0], root, bindir, *args)
    assert r2.returncode == 0, r2.stderr + r2.stdout
    assert tree(root) == first, "a second run changed files"
    assert "keeping existing" in r2.stdout

    cfg = load_node_config(root / "etc" / "earwitness" / "node.toml")
    assert cfg.id == "north-01" and cfg.audio.device == "hw:3,0"      # from arecord -l
    assert (root / "etc" / "default" / "gpsd.orig").read_text() == 'DEVICES=""\n'
    assert (root / "etc" / "default" / "gpsd").read_text() == (DEPLOY / "gpsd" / "gpsd.default").read_text()
    assert (root / "etc" / "chrony" / "chrony.conf").read_text().count("confdir /etc/chrony/conf.d") == 1
    assert (root / "etc" / "chrony" / "chrony.conf.earwitness-orig").read_text() == "pool 2.debian.pool.ntp.org iburst\n"
    assert (root / "etc" / "fstab.earwitness-orig").read_text() == "PARTUUID=1234-02 / ext4 defaults 0 1\n"
    assert (root / "etc" / "chrony" / "conf.d" / "earwitness.conf").exists()
    assert (root / "boot" / "firmware" / "config.txt").read_text().count("dtoverlay=pps-gpio,gpiopin=18") == 1
    assert "serial0" not in (root / "boot" / "firmware" / "cmdline.txt").read_text()
    assert "defaults,noatime" in (root / "etc" / "fstab").read_text()
    assert (root / "etc" / "systemd" / "system" / "earwitness-node.service").read_bytes() == UNITS["node"].read_bytes()
    assert (root / "etc" / "systemd" / "journald.conf.d" / "earwitness.conf").exists()
    calls = log.read_text()
    assert "apt-get install -y -q --no-install-recommends python3-venv python3-pip libportaudio2" in calls
    for pkg in ("gpsd ", "gpsd-tools", "chrony", "pps-tools", "alsa-utils"):
        assert pkg in calls
    assert "systemctl enable gpsd.service chrony.service earwitness-node.service" in calls
    assert f"pip install -q --disable-pip-version-check {ROOT}[audio]" in calls
    assert "usermod -a -G audio earwitness" in calls

    # the enrolment file from the server: keys go into node.toml, the rest is kept
    creds = tmp_path / "north-01.toml"
    creds.write_text(enrolment("north-01", "tcp://server.example.org:5555"))
    r3 = rehearse(SCRIPTS[0], root, bindir, *args, "--credentials", str(creds))
    assert r3.returncode == 0, r3.stderr + r3.stdout
    cfg = load_node_config(root / "etc" / "earwitness" / "node.toml")
    assert cfg.security.secret_key == "X" * 40 and cfg.audio.device == "hw:3,0"
    assert oct((root / "etc" / "earwitness" / "node.toml").stat().st_mode & 0o777) == "0o640"


def test_server_provisioning_rehearsal_creates_keys_once(tmp_path):
    bindir, log = make_stubs(tmp_path)
    root = tmp_path / "root"
    root.mkdir()
    args = ("--public-endpoint", "tcp://server.example.org:5555")
    r1 = rehearse(SCRIPTS[1], root, bindir, *args)
    assert r1.returncode == 0, r1.stderr + r1.stdout
    keys = root / "etc" / "earwitness" / "keys"
    secret = (keys / "server.key_secret").read_bytes()
    r2 = rehearse(SCRIPTS[1], root, bindir, *args)
    assert r2.returncode == 0, r2.stderr + r2.stdout
    assert (keys / "server.key_secret").read_bytes() == secret          # kept, not replaced
    assert "keeping the existing server key" in r2.stdout
    cfg = load_server_config(root / "etc" / "earwitness" / "server.toml")
    assert cfg.keys_dir == "/etc/earwitness/keys" and cfg.bind == "tcp://0.0.0.0:5555"
    assert "systemctl enable chrony.service earwitness-server.service" in log.read_text()
    assert "keys enroll NODE_ID --server tcp://server.example.org:5555" in r2.stdout


def pi_root(tmp: Path, model: str = "Raspberry Pi 5 Model B Rev 1.0",
            cmdline: str = "console=tty1 root=PARTUUID=1234-02 rootwait") -> Path:
    """A scratch root file system of a freshly flashed Raspberry Pi ``model``."""
    root = tmp / "root"
    (root / "boot" / "firmware").mkdir(parents=True)
    (root / "boot" / "firmware" / "config.txt").write_text("dtparam=audio=on\n")
    (root / "boot" / "firmware" / "cmdline.txt").write_text(cmdline + "\n")
    (root / "proc" / "device-tree").mkdir(parents=True)
    (root / "proc" / "device-tree" / "model").write_text(model + "\x00")
    (root / "etc" / "chrony").mkdir(parents=True)
    (root / "etc" / "chrony" / "chrony.conf").write_text("pool 2.debian.pool.ntp.org iburst\n")
    (root / "etc" / "default").mkdir(parents=True)
    (root / "etc" / "default" / "gpsd").write_text('DEVICES=""\n')
    (root / "etc" / "fstab").write_text("PARTUUID=1234-02 / ext4 defaults 0 1\n")
    return root


def settings(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def test_node_provisioning_options_survive_re_runs(tmp_path):
    """--pps-gpio/--gps-device/--nmea-offset, and what the guide used to have users edit by
    hand, are not reverted by a re-run; --force-config replaces them (keeping node.toml's keys)."""
    bindir, _ = make_stubs(tmp_path)
    root = pi_root(tmp_path)
    config_txt = root / "boot" / "firmware" / "config.txt"
    gpsd = root / "etc" / "default" / "gpsd"
    chrony = root / "etc" / "chrony" / "conf.d" / "earwitness.conf"
    node = root / "etc" / "earwitness" / "node.toml"
    base = ("--node-id", "north-01", "--server", "tcp://server.example.org:5555", "--yes")
    opts = ("--pps-gpio", "4", "--gps-device", "/dev/ttyAMA10", "--nmea-offset", "0.35")

    r = rehearse(SCRIPTS[0], root, bindir, *base, *opts)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "dtoverlay=pps-gpio,gpiopin=4" in settings(config_txt)
    assert "dtoverlay=pps-gpio,gpiopin=18" not in config_txt.read_text()
    assert 'DEVICES="/dev/ttyAMA10 /dev/pps0"' in settings(gpsd)
    assert "refclock SHM 0 refid NMEA offset 0.35 delay 0.2 noselect" in settings(chrony)
    assert "ls -l /dev/pps0 /dev/ttyAMA10" in r.stdout
    assert "--pps-gpio 4 --gps-device /dev/ttyAMA10 --nmea-offset 0.35 --credentials" in r.stdout
    first = tree(root)

    # the same options again: nothing changes, nothing to note
    r = rehearse(SCRIPTS[0], root, bindir, *base, *opts)
    assert r.returncode == 0, r.stderr + r.stdout
    assert tree(root) == first and "differ from what this run would write" not in r.stdout

    # options forgotten: the files are kept, and each is named in a one-line note
    r = rehearse(SCRIPTS[0], root, bindir, *base)
    assert r.returncode == 0, r.stderr + r.stdout
    assert tree(root) == first
    notes = [ln for ln in r.stdout.splitlines() if "differ from what this run would write" in ln]
    assert len(notes) == 3, r.stdout
    for path in (gpsd, chrony, config_txt):
        assert any(str(path) in ln and "--force-config" in ln for ln in notes), path

    # a hand edit (the chrony offset tuned, a comment added) is kept as well
    chrony.write_text(chrony.read_text().replace("offset 0.35", "offset 0.42") + "# tuned by hand\n")
    edited = chrony.read_bytes()
    r = rehearse(SCRIPTS[0], root, bindir, *base, *opts)
    assert r.returncode == 0, r.stderr + r.stdout
    assert chrony.read_bytes() == edited and f"keeping {chrony}" in r.stdout

    # --force-config: back to what the options say; node.toml is rewritten but keeps its keys
    creds = tmp_path / "north-01.toml"
    creds.write_text(enrolment("north-01", "tcp://server.example.org:5555"))
    r = rehearse(SCRIPTS[0], root, bindir, *base, *opts, "--credentials", str(creds))
    assert r.returncode == 0, r.stderr + r.stdout
    node.write_text(node.read_text().replace('device = "hw:3,0"', 'device = "USB Audio"'))
    r = rehearse(SCRIPTS[0], root, bindir, *base, "--force-config")
    assert r.returncode == 0, r.stderr + r.stdout
    assert "dtoverlay=pps-gpio,gpiopin=18" in settings(config_txt)
    assert config_txt.read_text().count("# >>> earwitness >>>") == 1
    assert gpsd.read_text() == (DEPLOY / "gpsd" / "gpsd.default").read_text()
    assert chrony.read_text() == (DEPLOY / "chrony" / "earwitness.conf").read_text()
    cfg = load_node_config(node)
    assert cfg.security.secret_key == "X" * 40 and cfg.audio.device == "hw:3,0"
    assert node.read_text().count("[security]") == 1
    assert "keeping the [security] keys" in r.stdout


def test_node_provisioning_keeps_a_hand_edited_stock_install(tmp_path):
    """Nodes set up before the options existed: the guide had users edit the files by hand."""
    bindir, _ = make_stubs(tmp_path)
    root = pi_root(tmp_path)
    base = ("--node-id", "north-01", "--server", "tcp://server.example.org:5555", "--yes")
    r = rehearse(SCRIPTS[0], root, bindir, *base)
    assert r.returncode == 0, r.stderr + r.stdout
    config_txt = root / "boot" / "firmware" / "config.txt"
    gpsd = root / "etc" / "default" / "gpsd"
    config_txt.write_text(config_txt.read_text().replace("gpiopin=18", "gpiopin=4"))
    gpsd.write_text(gpsd.read_text().replace("/dev/ttyAMA0 /dev/pps0", "/dev/ttyAMA10 /dev/pps0"))
    edited = tree(root)
    r = rehearse(SCRIPTS[0], root, bindir, *base)
    assert r.returncode == 0, r.stderr + r.stdout
    assert tree(root) == edited
    assert f"keeping {gpsd}" in r.stdout and "block in " + str(config_txt) in r.stdout
    # the options that say the same: comments are brought up to date, settings stay
    r = rehearse(SCRIPTS[0], root, bindir, *base, "--pps-gpio", "4", "--gps-device", "/dev/ttyAMA10")
    assert r.returncode == 0, r.stderr + r.stdout
    assert "differ from what this run would write" not in r.stdout
    assert "# The GPS pulse-per-second on GPIO4 " in config_txt.read_text()
    assert 'DEVICES="/dev/ttyAMA10 /dev/pps0"' in settings(gpsd)


def test_marker_block_edit_refuses_an_unclosed_block(tmp_path):
    cfg = tmp_path / "config.txt"
    text = "dtparam=audio=on\n# >>> earwitness >>>\nenable_uart=1\n[pi4]\narm_boost=1\n"
    cfg.write_text(text)
    r = source_and_run(SCRIPTS[0], f'edit_marker_block "{cfg}" "{DEPLOY / "pi" / "config.txt"}"')
    assert r.returncode == 1 and "without its '# <<< earwitness <<<'" in r.stderr
    assert cfg.read_text() == text
