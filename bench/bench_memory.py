"""Peak memory with a backlog of big mails: `run --once` over a real Dovecot, and `ingest` of files.

    python bench/bench_memory.py [--mails 12] [--mb 30] [--files 8]

Each mail carries one attachment that makes it about --mb MB on the wire (base64), in Chinese and
English. The figure is the peak RSS of the `mailflow` process (ru_maxrss of the child), which must stay
under a documented cap (300 MB) whatever the backlog: mailflow fetches at most 8 MB of mail per IMAP
answer (a bigger mail alone), holds at most 32 MB of raw mail per batch, and `ingest` streams its input.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.dovecot import Dovecot  # noqa: E402


def big_mail(i: int, mb: float) -> bytes:
    payload = os.urandom(int(mb * 1024 * 1024 * 3 / 4))
    b64 = base64.encodebytes(payload)
    return (f"From: Customer {i} <big{i}@customer.example>\r\nTo: support@support.example\r\n"
            f"Subject: =?utf-8?b?{base64.b64encode(f'日志文件 {i}'.encode()).decode()}?=\r\n"
            f"Message-ID: <big{i}.{time.time_ns()}@customer.example>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0800\r\n"
            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=BB\r\n\r\n--BB\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            "系统报错，附件是服务器日志，请帮忙分析。\r\n--BB\r\n"
            f'Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="log{i}.bin"\r\n'
            "Content-Transfer-Encoding: base64\r\n\r\n").encode() + b64.replace(b"\n", b"\r\n") + b"--BB--\r\n"


def peak_of(cmd: list[str], env: dict) -> tuple[float, float, int]:
    """(peak RSS MB, seconds, exit status) of one child process: its VmHWM, read while it runs (the
    children's ru_maxrss would also count other children, such as the test server's)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    hwm = 0
    while p.poll() is None:
        try:
            with open(f"/proc/{p.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        hwm = max(hwm, int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.02)
    err = p.stderr.read().decode("utf-8", "replace") if p.stderr else ""
    if p.returncode not in (0, 3):
        print(err[-2000:], file=sys.stderr)
    return hwm / 1024, time.perf_counter() - t0, p.returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mails", type=int, default=12)
    ap.add_argument("--mb", type=float, default=30)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--which", choices=["once", "ingest", "both"], default="both")
    a = ap.parse_args()
    if a.which == "both":
        for w in ("once", "ingest"):
            subprocess.run([sys.executable, __file__, "--mails", str(a.mails), "--mb", str(a.mb), "--files",
                            str(a.files), "--which", w], check=True)
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="mfmem"))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("MAILFLOW_CONFIG", None)
    try:
        if a.which == "once":
            with Dovecot(tmp / "dv", users={"support": "secret"}) as dv:
                dv.start()
                for i in range(a.mails):
                    dv.append("support", big_mail(i, a.mb))
                cfg = tmp / "mailflow.toml"
                cfg.write_text(f'[storage]\ndata_dir = "{tmp / "data"}"\n[[mailbox]]\nname = "support"\n'
                               f'host = "127.0.0.1"\nport = {dv.port}\ntls = "none"\nuser = "support"\n'
                               f'password = "secret"\naddress = "support@support.example"\n', encoding="utf-8")
                peak, secs, rc = peak_of([sys.executable, "-m", "mailflow", "--config", str(cfg), "run", "--once"],
                                         env)
                print(f"run --once: {a.mails} mails of {a.mb:g} MB: peak RSS {peak:.0f} MB, {secs:.1f} s, exit {rc}")
        else:
            d = tmp / "mails"
            d.mkdir()
            for i in range(a.files):
                (d / f"{i:03d}.eml").write_bytes(big_mail(i, a.mb))
            env["MAILFLOW_DATA_DIR"] = str(tmp / "data2")
            peak, secs, rc = peak_of([sys.executable, "-m", "mailflow", "ingest", str(d)], env)
            print(f"ingest: {a.files} files of {a.mb:g} MB: peak RSS {peak:.0f} MB, {secs:.1f} s, exit {rc}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
