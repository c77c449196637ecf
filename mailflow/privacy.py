"""Personal data in logs: customer addresses are masked (w***@example.com) unless debug is on.

One log filter on the root handler covers every module, whoever logs; modules still avoid putting
addresses into log lines where they can.
"""

from __future__ import annotations

import logging
import re

_EMAIL = re.compile(r"([^\s@<>\"',;:])[^@\s<>\"',;:]*@([^\s<>\"',;:]+)")  # any script: 用户@例子.中国


def mask_addresses(text: str) -> str:
    """``wang.fang@customer.example`` -> ``w***@customer.example``, everywhere in the text."""
    return _EMAIL.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", text or "")


def mask(addr: str) -> str:
    return mask_addresses(addr) if "@" in addr else "***"


class MaskAddresses(logging.Filter):
    """Unless debug logging is on, no full email address reaches the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG and not logging.getLogger().isEnabledFor(logging.DEBUG):
            msg = record.getMessage()
            if "@" in msg:
                record.msg, record.args = mask_addresses(msg), ()
        return True
