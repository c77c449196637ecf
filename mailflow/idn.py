"""Internationalised addresses (RFC 6531): the ASCII forms mail can travel in.

A Unicode domain has an ASCII form (IDNA punycode, ``例子.中国`` -> ``xn--fsqu00a.xn--fiqs8s``), so an
address with an ASCII local part can always be written and sent without SMTPUTF8. A UTF-8 local
part has no ASCII form: such a mail needs a server that offers SMTPUTF8 (send.py).
"""

from __future__ import annotations

__all__ = ["envelope_address", "idna_domain"]


def idna_domain(domain: str) -> str | None:
    """The ASCII (punycode) form of a domain, or None when it has none (invalid label, too long)."""
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return None


def envelope_address(addr: str) -> str:
    """The address for MAIL FROM / RCPT TO: the domain punycoded when that makes it ASCII, so only a
    UTF-8 local part needs SMTPUTF8. Anything else is returned unchanged."""
    local, at, domain = addr.rpartition("@")
    if at and local.isascii() and not domain.isascii():
        return f"{local}@{idna_domain(domain) or domain}"
    return addr
