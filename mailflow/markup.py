"""Mail HTML made safe for the stdlib parser in linear time (used by parse and replies alike).

html.parser is quadratic on many unclosed comments and on "<" without ">" (24 KB of "<a " took
3.6 s); these two passes make any input linear before it is parsed.
"""

from __future__ import annotations


def strip_comments(markup: str) -> str:
    """Drop <!-- ... --> (an unclosed one drops the rest) in linear time."""
    out, i = [], 0
    while True:
        j = markup.find("<!--", i)
        if j < 0:
            out.append(markup[i:])
            return "".join(out)
        out.append(markup[i:j])
        k = markup.find("-->", j + 4)
        if k < 0:
            return "".join(out)
        i = k + 3


def close_tags(markup: str) -> str:
    """A "<" with no ">" before the next "<" becomes text, so the parser never rescans to the end."""
    parts = markup.split("<")
    return parts[0] + "".join(("<" if ">" in seg else "&lt;") + seg for seg in parts[1:])


def safe(markup: str, limit: int) -> str:
    """Comments dropped, capped at `limit` characters, stray "<" escaped."""
    return close_tags(strip_comments(markup)[:limit])
