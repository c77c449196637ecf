"""What a new admin gets: the sdist, the wheel built from it, and the README's quick start.

Each is installed into a fresh venv outside the source tree and run from an empty directory with
nothing of the checkout on sys.path, so a file missing from the package shows up here and not on
a user's machine. The dependencies (durable-rules is C source only and compiles at install) are
built once per session into a wheelhouse; every install after that is offline (--no-index).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import time
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IGNORE = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", "mailflow-data",
                                ".hypothesis", ".pytest_cache", ".ruff_cache", "out", "*.pyc")
TIMES: dict[str, float] = {}


def timed(label: str):
    class _T:
        def __enter__(self):
            self.t = time.monotonic()

        def __exit__(self, *exc):
            TIMES[label] = round(time.monotonic() - self.t, 1)
            print(f"[packaging] {label}: {TIMES[label]} s")

    return _T()


def clean_env(**extra: str) -> dict[str, str]:
    """The environment a user has: nothing of this checkout importable, no mailflow settings."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME") and not k.startswith("MAILFLOW_")}
    env.update(extra)
    return env


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    return r


def ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, f"{' '.join(map(str, r.args))} exited {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def copy_tree(dst: Path) -> Path:
    shutil.copytree(REPO, dst, ignore=IGNORE, symlinks=True)
    return dst


@pytest.fixture(scope="session")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("packaging")


@pytest.fixture(scope="session")
def offline(work) -> dict[str, str]:
    """pip settings for every install below: only the session's wheelhouse, no index."""
    wh = work / "wheelhouse"
    wh.mkdir()
    deps = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    build_req = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["build-system"]["requires"]
    with timed("wheelhouse (dependencies + build backend, durable-rules compiled once)"):
        ok(run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "-w", str(wh),
                *build_req, *deps], cwd=work, env=clean_env()))
    assert list(wh.glob("durable_rules-*.whl"))
    links = " ".join(x for x in (str(wh), os.environ.get("PIP_FIND_LINKS", "")) if x)
    return {"PIP_FIND_LINKS": links, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


@pytest.fixture(scope="session")
def dists(work, offline) -> dict[str, Path]:
    """`python -m build` on a clean copy: the sdist, then the wheel built from that sdist."""
    pytest.importorskip("build", reason="the test extra's `build` package builds the sdist and wheel")
    src = copy_tree(work / "src")
    out = work / "dist"
    with timed("python -m build (sdist, then wheel from the sdist)"):
        ok(run([sys.executable, "-m", "build", "--outdir", str(out), str(src)], cwd=work, env=clean_env(**offline)))
    [sdist] = out.glob("mailflow-*.tar.gz")
    [wheel] = out.glob("mailflow-*.whl")
    return {"sdist": sdist, "wheel": wheel}


def test_sdist_carries_rules_templates_samples_and_config(dists):
    with tarfile.open(dists["sdist"]) as tf:
        members = {m.name.split("/", 1)[1]: m for m in tf.getmembers() if "/" in m.name}
    for name in ("rules/classify.yaml", "rules/priority.yaml", "rules/routing.yaml", "rules/escalation.yaml",
                 "templates/zh/ack.txt.j2", "templates/en/ack.html.j2", "templates/zh-Hant/ack.txt.j2",
                 "templates/zh/_commands.txt.j2", "mailflow/example.toml", "mailflow/samples/03-inquiry-zh-big5.eml",
                 "systemd/mailflow.service", "MANIFEST.in", "setup.py", "README.md", "quickstart"):
        assert name in members, name
    assert members["quickstart"].mode & stat.S_IXUSR
    tpl = sorted(n for n in members if n.startswith("templates/") and n.endswith(".j2"))
    assert tpl == sorted(p.relative_to(REPO).as_posix() for p in (REPO / "templates").rglob("*.j2"))
    assert not [n for n in members if "__pycache__" in n or n.endswith(".pyc") or ".venv" in n]


def test_wheel_from_the_sdist_bundles_rules_and_templates(dists):
    names = set(zipfile.ZipFile(dists["wheel"]).namelist())
    for name in ("mailflow/bundled/rules/classify.yaml", "mailflow/bundled/templates/zh/ack.txt.j2",
                 "mailflow/bundled/templates/zh-Hant/ack.txt.j2", "mailflow/bundled/templates/en/_commands.txt.j2",
                 "mailflow/samples/01-complaint-zh.eml", "mailflow/example.toml", "mailflow/cliutil.py",
                 "mailflow/hanzi.py"):
        assert name in names, name
    assert not [n for n in names if n.startswith(("rules/", "templates/", "tests/", "tools/", "bench/"))]


@pytest.mark.parametrize("kind", ["sdist", "wheel"])
def test_installed_package_runs_demo_init_and_check(kind, dists, offline, work):
    env_dir = work / f"venv-{kind}"
    with timed(f"venv + pip install {kind}"):
        venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
        ok(run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", str(dists[kind])], cwd=work,
               env=clean_env(**offline)))
    mailflow = str(env_dir / "bin" / "mailflow")
    cwd = work / f"cwd-{kind}"
    cwd.mkdir()
    env = clean_env()
    with timed(f"mailflow demo/init/check from the {kind}"):
        r = ok(run([mailflow, "demo"], cwd=cwd, env=env, timeout=300))
        assert "ingesting 7 sample mails" in r.stdout and str(env_dir) in r.stdout  # the installed samples
        assert len(set(re.findall(r"CW\d{12}", r.stdout))) == 5  # five tickets from seven mails
        assert "outbox: 5 mails rendered and queued" in r.stdout
        assert (cwd / "mailflow-data" / "mailflow.json").is_file()
        site = ok(run([str(env_dir / "bin" / "python"), "-c",
                       "import mailflow.resources as r; print(r.bundled_templates()); print(r.missing())"],
                      cwd=cwd, env=env)).stdout.splitlines()
        assert site[0].startswith(str(env_dir)) and site[0].endswith("mailflow/bundled/templates") and site[1] == "[]"

        r = ok(run([mailflow, "init", "site"], cwd=cwd, env=env))
        assert "wrote" in r.stdout
        d = cwd / "site"
        assert (d / "mailflow.toml").is_file() and (d / "rules" / "classify.yaml").is_file()
        assert (d / "templates" / "zh" / "ack.txt.j2").is_file() and (d / "templates" / "zh-Hant" / "ack.txt.j2").is_file()
        r = ok(run([mailflow, "--config", str(d / "mailflow.toml"), "check"], cwd=cwd, env=env))
        assert r.stdout.startswith("ok: config") and str(d / "rules") in r.stdout


def test_build_fails_loudly_without_templates(work, offline):
    """A tree (or an sdist) that lost templates/ must not become a wheel that fails on the user's machine."""
    src = copy_tree(work / "src-broken")
    shutil.rmtree(src / "templates")
    r = run([sys.executable, "-m", "build", "--wheel", "--outdir", str(work / "dist-broken"), str(src)], cwd=work,
            env=clean_env(**offline))
    assert r.returncode != 0
    assert "templates is missing or empty" in r.stdout + r.stderr
    assert not list((work / "dist-broken").glob("*.whl"))


def test_readme_quick_start_in_a_clean_copy(work, offline):
    """`./quickstart` from a copy without any venv: creates .venv, installs, runs the demo."""
    src = copy_tree(work / "quickstart")
    assert not (src / ".venv").exists()
    with timed("./quickstart in a clean copy"):
        r = ok(run(["sh", "./quickstart"], cwd=src, env=clean_env(**offline)))
    assert "creating the virtualenv .venv" in r.stderr
    assert "ingesting 7 sample mails" in r.stdout and "outbox: 5 mails" in r.stdout
    assert str(src / ".venv") in r.stdout  # the samples came from the venv's install, not the tree
    assert (src / ".venv" / "bin" / "mailflow").is_file() and (src / "mailflow-data" / "mailflow.json").is_file()


# ---- the quick start's checks, without installing anything -------------------------------------


def fake_python(tmp: Path, sitecustomize: str, ensurepip: bool = True) -> dict[str, str]:
    """PYTHONPATH entries that make this interpreter look like one missing a piece."""
    d = tmp / "fake"
    d.mkdir()
    (d / "sitecustomize.py").write_text(sitecustomize, encoding="utf-8")
    if not ensurepip:
        (d / "ensurepip").mkdir()
        (d / "ensurepip" / "__init__.py").write_text("raise ImportError('python3-venv is not installed')\n")
    return {"PYTHONPATH": str(d)}


def demo_script(tmp: Path, **env: str) -> subprocess.CompletedProcess:
    shutil.copy2(REPO / "quickstart", tmp / "quickstart")
    return run(["sh", str(tmp / "quickstart")], cwd=tmp, env={**clean_env(PYTHON=sys.executable), **env})


NO_HEADERS = """
import sysconfig
_get = sysconfig.get_paths
def get_paths(*a, **k):
    p = dict(_get(*a, **k)); p["include"] = "/nonexistent/include"; return p
sysconfig.get_paths = get_paths
"""


def test_quick_start_names_every_missing_package(tmp_path):
    r = demo_script(tmp_path, CC="/nonexistent/cc", **fake_python(tmp_path, NO_HEADERS, ensurepip=False))
    assert r.returncode == 1
    assert "-m venv (Debian package" in r.stderr and "Python headers" in r.stderr and "C compiler" in r.stderr
    line = [ln for ln in r.stderr.splitlines() if "apt-get install" in ln][-1]
    pkg = "python3" if Path(sys.executable).name == "python3" else \
        f"python{sys.version_info.major}.{sys.version_info.minor}"
    assert line.split("apt-get install", 1)[1].split() == [f"{pkg}-venv", f"{pkg}-dev", "gcc"]
    assert not (tmp_path / ".venv").exists()


def test_quick_start_refuses_an_old_python(tmp_path):
    r = demo_script(tmp_path, **fake_python(tmp_path, "import sys\nsys.version_info = (3, 10, 12, 'final', 0)\n"))
    assert r.returncode == 1
    assert "needs Python 3.11 or newer" in r.stderr and "is 3.10" in r.stderr
    assert "apt-get install python3.11 python3.11-venv python3.11-dev gcc" in r.stderr
    assert not (tmp_path / ".venv").exists()


def test_quick_start_without_python(tmp_path):
    r = demo_script(tmp_path, PYTHON="/nonexistent/python3")
    assert r.returncode == 1 and "not found" in r.stderr and "apt-get install python3 python3-venv" in r.stderr
