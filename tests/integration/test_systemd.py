"""The shipped systemd unit, sysusers and tmpfiles snippets: systemd's own tools accept them, and the
unit is the hardened Type=notify service the README describes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.helpers import REPO

SYSTEMD = REPO / "systemd"
UNIT = SYSTEMD / "mailflow.service"
EXEC = "/opt/mailflow/bin/mailflow"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed "
                                   "(Debian package `systemd`; .ci/run installs it)")


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        k, _, v = line.partition("=")
        out.setdefault(k.strip(), []).append(v.strip())
    return out


def installed_mailflow() -> str:
    """The `mailflow` console script pip installed (PATH, or next to this Python), else the
    interpreter running the module: `verify` insists that ExecStart's binary exists."""
    for cand in (shutil.which("mailflow"), str(Path(sys.executable).parent / "mailflow")):
        if cand and os.access(cand, os.X_OK) and Path(cand).is_file():
            return cand
    return f"{sys.executable} -m mailflow"


def local_unit(tmp_path: Path) -> Path:
    text = UNIT.read_text(encoding="utf-8")
    assert EXEC in text
    p = tmp_path / "mailflow.service"
    p.write_text(text.replace(EXEC, installed_mailflow()), encoding="utf-8")
    return p


@needs_analyze
def test_unit_passes_systemd_analyze_verify(tmp_path):
    unit = local_unit(tmp_path)
    r = subprocess.run([ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "mailflow.service" not in out, out  # no warnings about our unit either


@needs_analyze
def test_unit_sandbox_exposure_is_low(tmp_path):
    unit = local_unit(tmp_path)
    r = subprocess.run([ANALYZE, "security", "--offline=yes", "--no-pager", str(unit)], capture_output=True,
                       text=True, timeout=120)
    if r.returncode != 0 and "offline" in r.stderr:
        pytest.skip(f"this systemd-analyze has no `security --offline`: {r.stderr.strip()[:200]}")
    m = re.search(r"Overall exposure level for mailflow\.service: ([\d.]+)", r.stdout)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 2.0, r.stdout


def test_unit_is_a_hardened_notify_service():
    text = UNIT.read_text(encoding="utf-8")
    d = directives(text)

    def one(key: str) -> str:
        assert key in d, f"{key}= missing"
        return d[key][-1]

    assert one("Type") == "notify"
    assert one("NotifyAccess") == "main"
    assert int(one("WatchdogSec")) >= 40  # mailbox timeout (20 s default) stays under half of it
    assert one("Restart") == "on-failure"
    assert "2" in one("RestartPreventExitStatus").split()  # broken config: no restart loop
    assert re.fullmatch(r"/bin/kill -HUP \$MAINPID", one("ExecReload"))
    assert one("ExecStart") == f"{EXEC} --config /etc/mailflow/mailflow.toml run"
    assert one("User") == one("Group") == "mailflow"
    assert one("ProtectSystem") == "strict"
    assert one("ReadWritePaths") == "/var/lib/mailflow"
    assert one("StateDirectory") == "mailflow"
    assert "MAILFLOW_DATA_DIR=/var/lib/mailflow" in d["Environment"]
    for key in ("NoNewPrivileges", "PrivateTmp", "PrivateDevices", "ProtectHome", "ProtectKernelTunables",
                "ProtectKernelModules", "ProtectControlGroups", "RestrictNamespaces", "RestrictSUIDSGID",
                "LockPersonality", "MemoryDenyWriteExecute"):
        assert one(key) == "yes", key
    assert one("CapabilityBoundingSet") == ""
    assert one("RestrictAddressFamilies").split() == ["AF_UNIX", "AF_INET", "AF_INET6"]
    assert "@system-service" in d["SystemCallFilter"]
    # secrets come from credentials or a root-only environment file, never from the unit itself
    assert {c.split(":")[0] for c in d["LoadCredential"]} == {"imap", "smtp"}
    assert all(c.split(":", 1)[1].startswith("/etc/mailflow/credentials/") for c in d["LoadCredential"])
    assert one("EnvironmentFile").startswith("-/etc/mailflow/")
    assert not any(re.search(r"pass|secret|token", e, re.I) for e in d["Environment"])
    assert "SetCredential" not in d
    assert one("WantedBy") == "multi-user.target"


def test_mailbox_timeout_default_is_under_half_the_watchdog():
    from mailflow.config import MailboxConfig

    watchdog = int(directives(UNIT.read_text(encoding="utf-8"))["WatchdogSec"][-1])
    assert MailboxConfig("x", "h").timeout < watchdog / 2


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None or os.geteuid() != 0,
                    reason="needs systemd-sysusers and root (it writes passwd/group files into --root)")
def test_sysusers_creates_an_unprivileged_user(tmp_path):
    (tmp_path / "etc").mkdir()
    r = subprocess.run(["systemd-sysusers", f"--root={tmp_path}", str(SYSTEMD / "mailflow.sysusers")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    entry = next(ln for ln in (tmp_path / "etc" / "passwd").read_text().splitlines() if ln.startswith("mailflow:"))
    _name, _x, uid, _gid, _gecos, home, shell = entry.split(":")
    assert 0 < int(uid) < 1000 and home == "/var/lib/mailflow" and shell.endswith("nologin")


@pytest.mark.skipif(shutil.which("systemd-tmpfiles") is None or os.geteuid() != 0,
                    reason="needs systemd-tmpfiles and root (it chowns inside --root)")
def test_tmpfiles_creates_private_directories(tmp_path):
    (tmp_path / "etc").mkdir()
    subprocess.run(["systemd-sysusers", f"--root={tmp_path}", str(SYSTEMD / "mailflow.sysusers")],
                   capture_output=True, timeout=60)
    r = subprocess.run(["systemd-tmpfiles", f"--root={tmp_path}", "--create", str(SYSTEMD / "mailflow.tmpfiles")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    modes = {p: (tmp_path / p).stat().st_mode & 0o777
             for p in ("etc/mailflow", "etc/mailflow/credentials", "var/lib/mailflow")}
    assert modes == {"etc/mailflow": 0o750, "etc/mailflow/credentials": 0o700, "var/lib/mailflow": 0o700}
    assert (tmp_path / "etc/mailflow/credentials").stat().st_uid == 0


def test_readme_walks_through_the_deployment():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert "SYSTEMD_SECTION" not in text
    section = text.split("## Running as a service (systemd)", 1)[1].split("\n## ", 1)[0]
    for needle in ("systemd/mailflow.service", "mailflow.sysusers", "mailflow.tmpfiles", "/etc/mailflow",
                   "LoadCredential", "systemctl enable --now mailflow", "journalctl -u mailflow",
                   "systemctl reload mailflow", "mailflow status", "WatchdogSec"):
        assert needle in section, needle
