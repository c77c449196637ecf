"""Copy the top-level rules/ and templates/ into the package when building, so every install (from the
checkout, from the sdist, or from a wheel built from the sdist) carries them as ``mailflow/bundled/``.

The repository keeps one copy, at the top level, where admins look for them; MANIFEST.in puts them into
the sdist. A build that cannot find them stops with an error instead of producing a package whose
``mailflow demo`` and ``mailflow init`` fail later on the user's machine.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.errors import FileError

HERE = Path(__file__).resolve().parent
BUNDLED = ("rules", "templates")


class BuildWithBundled(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "mailflow" / "bundled"
        for name in BUNDLED:
            src = HERE / name
            if not src.is_dir() or not any(src.rglob("*.*")):
                raise FileError(f"{src} is missing or empty: the package would ship without its "
                                 f"{name} (an sdist needs MANIFEST.in to include {name}/)")
            dst = target / name
            if dst.exists():
                shutil.rmtree(dst)
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*~", ".*"))


setup(cmdclass={"build_py": BuildWithBundled})
