"""Where the bundled rules, templates and sample mails live, installed or in a checkout."""

from __future__ import annotations

from pathlib import Path

PKG = Path(__file__).resolve().parent
REPO = PKG.parent


def _bundled(name: str) -> Path:
    installed = PKG / "bundled" / name
    if installed.is_dir():
        return installed
    return REPO / name


def bundled_rules() -> Path:
    return _bundled("rules")


def bundled_templates() -> Path:
    return _bundled("templates")


def samples() -> Path:
    return PKG / "samples"
