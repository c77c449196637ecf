"""Errors that carry every problem found, one line each, so an admin fixes them all in one go."""

from __future__ import annotations


class ProblemsError(Exception):
    """One or more problems, each a line naming the file (and key, rule or line) and the reason."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems
