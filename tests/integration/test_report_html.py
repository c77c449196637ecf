"""The HTML report in a real browser: Debian's headless `chromium` (installed by `bash .ci/run`).

- the page references nothing outside itself (no src/href to http:, https: or //, no CSS url(), no
  @import, no script);
- opened from a file with every host name unresolvable and a recording proxy as the only way out,
  the page makes no request (a control page with one remote image does reach the proxy, so the
  check can fail). Chromium itself still calls home through the proxy whatever the flags say (its
  clock, component updater and accounts: Google hosts, no page asked for them): those are left out;
- the screenshot is not blank: text and the charts' colours are there.
"""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import threading
import zlib
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest

from mailflow.report_metrics import compute, month_period
from mailflow.report_render import render_html
from tests.unit.test_summary import SH, Tk, at

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (bash .ci/run installs it)")


def _tickets() -> list[Tk]:
    out = []
    cats = ["fault", "inquiry", "complaint", "suggestion", "praise"]
    prios = ["urgent", "high", "normal", "low"]
    for i in range(40):
        month, day = (10, 5 + i % 25) if i < 12 else (11, 2 + i % 27)
        k = Tk(f"CW{i:04d}", at(month, day, 9 + i % 7), priority=prios[i % 4], category=cats[i % 5],
               team=["tech", "customer_service"][i % 2], assignee=f"agent{i % 3}@support.example",
               tags=[["refund"], ["logistics", "vip"], []][i % 3])
        if i % 6 != 5:
            k.answer(at(month, day, 10 + i % 7)).resolve(at(month, day + 1, 11))
            if i % 3 == 0:
                k.rate(at(month, day + 1, 12), 5 - i % 4)
        out.append(k)
    return out


def _page(tmp_path: Path, locale: str) -> Path:
    m = compute([k.s() for k in _tickets()], month_period(2026, 11, "Asia/Shanghai"),
                datetime(2026, 12, 2, 10, tzinfo=SH), locale=locale, company="测试公司",
                staff_names={"agent0@support.example": "王小明"})
    p = tmp_path / f"report-{locale}.html"
    p.write_text(render_html(m), encoding="utf-8")
    return p


class _Refs(HTMLParser):
    """Every URL-ish attribute, and whether there is a script or a stylesheet link."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        for name, value in attrs:
            if name in ("src", "href", "xlink:href", "action", "poster", "srcset", "data", "formaction"):
                self.urls.append(value or "")


def test_the_page_references_nothing_outside_itself(tmp_path):
    for locale in ("zh", "en", "zh-Hant"):
        text = _page(tmp_path, locale).read_text(encoding="utf-8")
        refs = _Refs()
        refs.feed(text)
        assert not [u for u in refs.urls if u.strip().lower().startswith(("http:", "https:", "//"))]
        assert not refs.tags & {"script", "link", "img", "iframe", "object", "embed"}
        assert "url(" not in text and "@import" not in text and "<svg" in text
        assert "PingFang SC" in text and "Noto Sans CJK SC" in text and "@page" in text and "A4" in text


class _Proxy:
    """A TCP listener standing in for the network: it records what connects, and answers nothing."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.seen: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(2)
            try:
                self.seen.append(conn.recv(4096))
                conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            except OSError:
                self.seen.append(b"")
            finally:
                conn.close()

    def close(self) -> None:
        self.sock.close()


def _chromium(tmp_path: Path, page: Path, proxy: _Proxy, shot: Path) -> None:
    profile = tmp_path / f"profile-{shot.stem}"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-default-apps", "--disable-extensions", f"--user-data-dir={profile}",
           "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", f"--proxy-server=http://127.0.0.1:{proxy.port}",
           "--proxy-bypass-list=<-loopback>", f"--screenshot={shot}", "--window-size=1000,1400",
           "--virtual-time-budget=3000", page.as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert shot.exists(), f"no screenshot: {r.returncode}\n{r.stderr[-2000:]}"


_BROWSER_OWN = (".google.com", ".googleapis.com", ".gvt1.com", ".gstatic.com", ".googleusercontent.com")


def _page_requests(seen: list[bytes]) -> list[str]:
    """Hosts asked for through the proxy, without the browser's own calls home."""
    hosts = []
    for req in seen:
        line = req.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split()
        if len(parts) < 2:
            continue
        target = parts[1]
        host = target.split("//", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0] if "//" in target else target.rsplit(":", 1)[0]
        if not ("." + host).endswith(_BROWSER_OWN):
            hosts.append(host)
    return hosts


def _pixels(path: Path) -> tuple[int, int, list[bytes], int]:
    """(width, height, rows, bytes per pixel) of an 8-bit RGB/RGBA PNG (zlib, the five filters)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    i, idat = 8, b""
    while i < len(data):
        n, kind = struct.unpack(">I4s", data[i:i + 8])
        body = data[i + 8:i + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype, _c, _f, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and ctype in (2, 6) and interlace == 0
        elif kind == b"IDAT":
            idat += body
        i += 12 + n
    raw = zlib.decompress(idat)
    bpp = 3 if ctype == 2 else 4
    stride = w * bpp
    rows, prev, p = [], bytearray(stride), 0
    for _ in range(h):
        f, line = raw[p], bytearray(raw[p + 1:p + 1 + stride])
        p += 1 + stride
        if f == 1:
            for x in range(bpp, stride):
                line[x] = (line[x] + line[x - bpp]) & 255
        elif f == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, prev, strict=True))
        elif f == 3:
            for x in range(stride):
                line[x] = (line[x] + (((line[x - bpp] if x >= bpp else 0) + prev[x]) >> 1)) & 255
        elif f == 4:
            for x in range(stride):
                a = line[x - bpp] if x >= bpp else 0
                b, c = prev[x], prev[x - bpp] if x >= bpp else 0
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return w, h, rows, bpp


def test_it_renders_offline_in_chromium_and_is_not_blank(tmp_path):
    proxy = _Proxy()
    try:
        # the control: a page that does want something from the network reaches the proxy
        control = tmp_path / "control.html"
        control.write_text('<html><body><img src="http://example.invalid/x.png">x</body></html>')
        _chromium(tmp_path, control, proxy, tmp_path / "control.png")
        assert _page_requests(proxy.seen) == ["example.invalid"], proxy.seen
        proxy.seen.clear()
        shot = tmp_path / "report.png"
        _chromium(tmp_path, _page(tmp_path, "zh"), proxy, shot)
        assert _page_requests(proxy.seen) == [], proxy.seen
    finally:
        proxy.close()
    w, h, rows, bpp = _pixels(shot)
    assert (w, h) == (1000, 1400)
    ink = blue = 0
    for row in rows[::2]:
        for x in range(0, w * bpp, bpp * 2):
            r, g, b = row[x], row[x + 1], row[x + 2]
            if r < 200 or g < 200 or b < 200:
                ink += 1
            if b > 180 and r < 80 and 60 < g < 140:  # the charts' #2563eb
                blue += 1
    sampled = (h // 2) * (w // 2)
    assert ink > sampled * 0.02, f"only {ink} of {sampled} sampled pixels are not white"
    assert blue > 200, f"no chart bars ({blue} blue pixels)"
