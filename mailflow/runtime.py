"""One runtime shared by the CLI and the daemon: config, store, rules, templates, pipeline, clock.

The CLI builds one per command; the daemon keeps one in a `Box` and a reload swaps the whole object
(between two batches), so nothing ever sees new rules with an old config or the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mailflow import config as config_mod
from mailflow.clock import SYSTEM, Clock
from mailflow.errors import ProblemsError
from mailflow.pipeline import Pipeline
from mailflow.render import Templates
from mailflow.rules import RuleSet
from mailflow.storeapi import StoreAPI, open_store


class LoadError(ProblemsError):
    """Rules and/or templates that do not compile: every problem (`problems`), from both."""


def load_all(cfg: config_mod.Config) -> tuple[RuleSet, Templates]:
    """Compile rules and templates whole; raises LoadError listing every problem of both, so the
    caller keeps the old ones."""
    problems: list[str] = []
    rules = templates = None
    try:
        rules = RuleSet.load(cfg.rules_dir)
    except Exception as e:
        problems += getattr(e, "problems", None) or [f"{cfg.rules_dir}: -: {type(e).__name__}: {e}"]
    try:
        templates = Templates.load(cfg.templates_dir)
    except Exception as e:
        problems += getattr(e, "problems", None) or [f"{cfg.templates_dir}: -: {type(e).__name__}: {e}"]
    if problems or rules is None or templates is None:
        raise LoadError(problems)
    return rules, templates


@dataclass
class Runtime:
    cfg: config_mod.Config
    store: StoreAPI
    rules: RuleSet
    templates: Templates
    pipeline: Pipeline
    clock: Clock = SYSTEM
    config_path: str | None = None

    @classmethod
    def load(cls, cfg: config_mod.Config, clock: Clock = SYSTEM, store: StoreAPI | None = None,
             config_path: str | None = None) -> Runtime:
        """Everything for `cfg`; raises LoadError (rules, templates) with every problem listed."""
        rules, templates = load_all(cfg)
        store = store or open_store(cfg)
        return cls(cfg, store, rules, templates, Pipeline(cfg, store, rules, templates, clock), clock, config_path)

    def reloaded(self, cfg: config_mod.Config) -> Runtime:
        """A new runtime on the same store and clock (raises LoadError and changes nothing if bad)."""
        rules, templates = load_all(cfg)
        p = Pipeline(cfg, self.store, rules, templates, self.clock)
        p.debug = self.pipeline.debug
        return Runtime(cfg, self.store, rules, templates, p, self.clock, self.config_path)

    @property
    def data_dir(self) -> Path:
        return self.store.dir


class Box:
    """The daemon's current runtime. Readers take `box.current` once per batch; a reload replaces it
    under the store's mutex, so a batch sees the old runtime or the new one, never a mix."""

    def __init__(self, rt: Runtime):
        self.current = rt

    @property
    def pipeline(self) -> Pipeline:
        return self.current.pipeline
