"""SMTP delivery over one reused connection, with a result per message and per recipient.

``SmtpSender.send_many`` sends mails one after another over a single connection (SMTP is
sequential and aiosmtplib does not pipeline; DESIGN.md 7 measured ~270 msg/s that way) and returns
one ``SendResult`` per mail, in order. It never raises for network or server trouble:

* connection refused, timeouts, a dropped connection, authentication failure, TLS failure
  -> ``temp`` for every mail not yet sent. A connection that drops while sending is re-opened once
  and the mail is tried again (at-least-once: if the server had accepted the mail just before the
  drop, it goes out twice; the Message-ID is the same, so clients collapse it). The budget of one
  reconnect is renewed after each delivered mail.
* a reply to MAIL FROM or DATA decides by ``code // 100``: 4 -> ``temp``, 5 -> ``perm``. ``421``
  (server closing) counts as a dropped connection.
* recipients: aiosmtplib raises nothing when only some recipients are refused. The mail is then
  ``sent``; 5xx refusals are in ``refused``, 4xx refusals in ``deferred`` (the caller may retry
  those addresses later). When every recipient is refused the mail is ``perm`` if all refusals were
  5xx, else ``temp``.
* a malformed recipient (not a plain ``local@domain``) is not sent to and is listed in ``refused``
  as ``501 invalid address``; no valid recipient or a malformed sender -> ``perm``.
* internationalised addresses (RFC 6531): a Unicode domain goes on the envelope punycoded, so an
  ASCII local part never needs the extension; a UTF-8 local part (or UTF-8 headers, RFC 6532) is
  sent with ``SMTPUTF8`` on MAIL FROM when the server offers it, and is ``perm`` ("cannot be
  answered: the server does not offer SMTPUTF8") when it does not: retrying would not help.

Logs one line per event (connect, per-mail result, reconnect, close), with addresses masked and
never a password, token or body.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiosmtplib
from aiosmtplib import (
    SMTPAuthenticationError,
    SMTPException,
    SMTPNotSupported,
    SMTPRecipientsRefused,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)

from mailflow.config import SmtpConfig
from mailflow.idn import envelope_address
from mailflow.privacy import mask_addresses as mask

log = logging.getLogger("mailflow.send")


@dataclass
class OutMail:
    key: str  # the outbox row this mail belongs to
    sender: str  # envelope sender (MAIL FROM)
    recipients: list[str]  # envelope recipients (RCPT TO)
    data: bytes  # the whole message, e.g. from render.build_mail


@dataclass
class SendResult:
    key: str
    status: str  # "sent" | "temp" | "perm"
    detail: str = ""  # the server's answer or the error, for the ticket log
    refused: dict[str, str] = field(default_factory=dict)  # recipient -> "550 ..." (permanent refusals)
    deferred: dict[str, str] = field(default_factory=dict)  # recipient -> "450 ..." (temporary refusals)


class _Dropped(Exception):
    """The connection went away while sending; the mail may be retried on a new connection."""


_ENVELOPE_BAD = re.compile(r"[\s<>\"(),;:\\\[\]\x00-\x1f\x7f]")


def _envelope_ok(addr: str) -> bool:
    """A plain ``local@domain`` that can go on a MAIL/RCPT line as is (no display names, no quoting)."""
    local, at, domain = addr.rpartition("@")
    return bool(at and local and domain and "@" not in local and not _ENVELOPE_BAD.search(addr))


def _resp(code: int, message: str) -> str:
    return f"{code} {' '.join(message.split())}".strip()


def _cls(code: int) -> str:
    return "perm" if code // 100 == 5 else "temp"


class SmtpSender:
    """One SMTP connection, opened on first use and kept open between ``send_many`` calls."""

    def __init__(self, cfg: SmtpConfig, *, tls_context: ssl.SSLContext | None = None,
                 local_hostname: str | None = None):
        self.cfg = cfg
        self._tls_context = tls_context  # tests and private CAs; None = system trust store
        self._local_hostname = local_hostname  # EHLO name; None = this host's FQDN
        self._smtp: aiosmtplib.SMTP | None = None
        self._lock = asyncio.Lock()

    # -- connection ------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._smtp is not None and self._smtp.is_connected

    async def _token(self) -> str:
        # token_command may take a while (it may refresh an OAuth token): keep the loop free
        return await asyncio.to_thread(self.cfg.token.get)

    def _client(self) -> aiosmtplib.SMTP:
        cfg = self.cfg
        kw: dict = {"hostname": cfg.host, "port": cfg.port, "timeout": cfg.timeout,
                    "local_hostname": self._local_hostname}
        if cfg.tls == "implicit":
            kw.update(use_tls=True, start_tls=False)
        elif cfg.tls == "starttls":
            kw.update(use_tls=False, start_tls=True)
        else:  # "none": plain, and no opportunistic STARTTLS either
            kw.update(use_tls=False, start_tls=False)
        if self._tls_context is not None:
            kw["tls_context"] = self._tls_context
        if cfg.auth == "xoauth2":
            kw["username"] = cfg.user or ""
            kw["oauth_token_generator"] = self._token
        elif cfg.user:
            kw["username"] = cfg.user
            kw["password"] = cfg.password.get()
        return aiosmtplib.SMTP(**kw)

    async def _connect(self) -> str | None:
        """Open the connection; None on success, else why not (for ``temp`` results)."""
        self._discard()
        cfg = self.cfg
        t0 = time.perf_counter()
        try:
            smtp = self._client()
            await smtp.connect()
        except SMTPAuthenticationError as e:
            why = f"authentication failed: {_resp(e.code, e.message)}"
        except SMTPResponseException as e:
            why = f"server refused the session: {_resp(e.code, e.message)}"
        except (TimeoutError, SMTPException, OSError) as e:
            why = f"cannot connect: {mask(str(e)) or type(e).__name__}"
        except Exception as e:  # noqa: BLE001 - e.g. a Secret that cannot be read
            why = f"cannot connect: {type(e).__name__}: {mask(str(e))}"
        else:
            self._smtp = smtp
            log.info("smtp connected %s:%s tls=%s auth=%s in %.0f ms", cfg.host, cfg.port, cfg.tls,
                     cfg.auth if (cfg.user or cfg.auth == "xoauth2") else "none",
                     (time.perf_counter() - t0) * 1000)
            return None
        log.warning("smtp %s:%s %s", cfg.host, cfg.port, why)
        return why

    def _discard(self) -> None:
        if self._smtp is not None:
            self._smtp.close()
            self._smtp = None

    async def close(self) -> None:
        """QUIT politely (bounded by the timeout) and drop the connection."""
        async with self._lock:
            smtp, self._smtp = self._smtp, None
            if smtp is None:
                return
            if smtp.is_connected:
                try:
                    await smtp.quit(timeout=min(self.cfg.timeout, 5.0))
                except Exception:  # noqa: BLE001 - closing anyway
                    pass
            smtp.close()
            log.info("smtp closed %s:%s", self.cfg.host, self.cfg.port)

    async def __aenter__(self) -> SmtpSender:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- sending ---------------------------------------------------------------------------------
    async def send_many(self, mails: list[OutMail],
                        on_result: Callable[[SendResult], None] | None = None) -> list[SendResult]:
        """Send in order over one connection; one result per mail, in the same order. `on_result`
        hears each result as soon as it is known (the outbox journals it before the next mail, so a
        crash re-sends at most the one mail in flight)."""
        results: list[SendResult] = []
        if not mails:
            return results
        async with self._lock:
            i = 0
            may_reconnect = True
            while i < len(mails):
                mail = mails[i]
                if not self.connected:
                    why = await self._connect()
                    if why is not None:
                        results.extend(SendResult(m.key, "temp", why) for m in mails[i:])
                        if on_result is not None:
                            for r in results[i:]:
                                on_result(r)
                        break
                try:
                    res = await self._send_one(mail)
                except _Dropped as e:
                    self._discard()
                    if may_reconnect:
                        may_reconnect = False
                        log.warning("smtp %s:%s connection lost (%s); reconnecting", self.cfg.host,
                                    self.cfg.port, e)
                        continue
                    results.extend(SendResult(m.key, "temp", f"connection lost: {e}") for m in mails[i:])
                    if on_result is not None:
                        for r in results[i:]:
                            on_result(r)
                    log.warning("smtp %s:%s connection lost again; %d mail(s) deferred", self.cfg.host,
                                self.cfg.port, len(mails) - i)
                    break
                except Exception as e:  # noqa: BLE001 - a bug must not lose the rest of the batch
                    log.exception("smtp key=%s unexpected error", mail.key)
                    self._discard()
                    res = SendResult(mail.key, "temp", f"{type(e).__name__}: {mask(str(e))}")
                results.append(res)
                if on_result is not None:
                    on_result(res)
                self._log(mail, res)
                if res.status == "sent":
                    may_reconnect = True
                i += 1
        return results

    def _log(self, mail: OutMail, r: SendResult) -> None:
        extra = ""
        if r.refused:
            extra += f" refused={len(r.refused)}"
        if r.deferred:
            extra += f" deferred={len(r.deferred)}"
        level = logging.INFO if r.status == "sent" else logging.WARNING
        log.log(level, "smtp %s key=%s rcpts=%d size=%d%s: %s", r.status, mail.key, len(mail.recipients),
                len(mail.data), extra, mask(r.detail))

    async def _send_one(self, mail: OutMail) -> SendResult:
        smtp = self._smtp
        assert smtp is not None
        opts: list[str] = []
        invalid = {r: "501 invalid address (not sent)" for r in mail.recipients if not _envelope_ok(r)}
        wire = {envelope_address(r): r for r in mail.recipients if r not in invalid}  # envelope form -> ours
        rcpts = list(wire)
        sender = envelope_address(mail.sender) if mail.sender else mail.sender
        if mail.sender and not _envelope_ok(mail.sender):
            return SendResult(mail.key, "perm", f"invalid sender address {mask(mail.sender)!r}")
        if not rcpts:
            return SendResult(mail.key, "perm", "no valid recipients", invalid)
        utf8 = [a for a in (sender, *rcpts) if not a.isascii()]
        head = mail.data.split(b"\r\n\r\n", 1)[0]
        try:
            if utf8 or not mail.data.isascii():  # build_mail output is 7-bit unless an address is UTF-8
                if smtp.is_ehlo_or_helo_needed:
                    await smtp.ehlo()
                if utf8 or not head.isascii():
                    if not smtp.supports_extension("smtputf8"):
                        who = ", ".join(mask(wire.get(a, a)) for a in utf8) or "a UTF-8 header"
                        return SendResult(mail.key, "perm",
                                          f"cannot be answered: {who} is an internationalised address "
                                          f"(RFC 6531) and the SMTP server does not offer SMTPUTF8", invalid)
                    opts.append("SMTPUTF8")
                if smtp.supports_extension("8bitmime"):
                    opts.append("BODY=8BITMIME")
            errors, message = await smtp.sendmail(sender, rcpts, mail.data, mail_options=opts)
        except SMTPRecipientsRefused as e:
            refused = dict(invalid)
            refused.update({wire.get(r.recipient, r.recipient): _resp(r.code, r.message)
                            for r in e.recipients if r.code // 100 == 5})
            deferred = {wire.get(r.recipient, r.recipient): _resp(r.code, r.message)
                        for r in e.recipients if r.code // 100 != 5}
            if any(r.code == 421 for r in e.recipients):
                raise _Dropped(_resp(421, e.recipients[0].message)) from None
            status = "temp" if deferred else "perm"
            first = e.recipients[0]
            return SendResult(mail.key, status, f"all recipients refused: {_resp(first.code, first.message)}",
                              refused, deferred)
        except SMTPResponseException as e:  # MAIL FROM, DATA or any other reply
            if e.code == 421:
                raise _Dropped(_resp(e.code, e.message)) from None
            return SendResult(mail.key, _cls(e.code), _resp(e.code, e.message))
        except (TimeoutError, SMTPServerDisconnected, SMTPTimeoutError, ConnectionError, OSError) as e:
            raise _Dropped(mask(str(e)) or type(e).__name__) from None
        except SMTPNotSupported as e:
            return SendResult(mail.key, "perm", f"not supported by the server: {e}")
        except ValueError as e:  # an address aiosmtplib will not put on the wire
            return SendResult(mail.key, "perm", f"invalid address: {e}")
        except SMTPException as e:
            return SendResult(mail.key, "temp", f"{type(e).__name__}: {e}")
        refused = dict(invalid)
        refused.update({wire.get(r, r): _resp(x.code, x.message) for r, x in errors.items() if x.code // 100 == 5})
        deferred = {wire.get(r, r): _resp(x.code, x.message) for r, x in errors.items() if x.code // 100 != 5}
        return SendResult(mail.key, "sent", " ".join(message.split()), refused, deferred)
