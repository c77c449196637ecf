"""Copy the top-level rules/ and templates/ into the package when building, so a plain
`pip install .` carries them (the repository keeps one copy, at the top level, for admins)."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent


class BuildWithBundled(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "mailflow" / "bundled"
        for name in ("rules", "templates"):
            src = HERE / name
            if src.is_dir():
                dst = target / name
                if dst.exists():
                    shutil.rmtree(dst)
                shutil.copytree(src, dst)


setup(cmdclass={"build_py": BuildWithBundled})
