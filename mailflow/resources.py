"""Where the bundled rules, templates, sample mails and example config live, installed or in a checkout.

An installed package carries rules/ and templates/ as ``mailflow/bundled/`` (setup.py copies them at
build time); a checkout has them once, at the top level. Only a real checkout (a pyproject.toml next
to the package) counts as one: an install without ``bundled/`` must not pick up some other
package's ``site-packages/rules``.
"""

from __future__ import annotations

from pathlib import Path

PKG = Path(__file__).resolve().parent
REPO = PKG.parent


def _in_checkout() -> bool:
    return (REPO / "pyproject.toml").is_file() and (REPO / "mailflow" / "resources.py").is_file()


def _bundled(name: str) -> Path:
    installed = PKG / "bundled" / name
    if installed.is_dir() or not _in_checkout():
        return installed  # when missing, errors then name the place the install should have filled
    return REPO / name


def bundled_rules() -> Path:
    return _bundled("rules")


def bundled_templates() -> Path:
    return _bundled("templates")


def samples() -> Path:
    return PKG / "samples"


def example_config() -> Path:
    return PKG / "example.toml"


def missing() -> list[str]:
    """``path: reason`` for each bundled resource this install lacks (empty when complete): a broken
    package says so in one line instead of failing later with a FileNotFoundError."""
    problems = []
    for path, what in ((bundled_rules(), "*.yaml"), (bundled_templates(), "*/*.j2"), (samples(), "*.eml")):
        if not path.is_dir():
            problems.append(f"{path}: missing (the mailflow package was built without it; reinstall "
                            f"from a release sdist/wheel or a checkout)")
        elif not any(path.glob(what)):
            problems.append(f"{path}: no {what} files")
    if not example_config().is_file():
        problems.append(f"{example_config()}: missing")
    return problems
