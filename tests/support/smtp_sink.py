"""A real SMTP server for tests: aiosmtpd in a thread on 127.0.0.1, recording what it accepts.

    with SmtpSink() as sink:
        ... send to sink.host:sink.port ...
        assert sink.wait_for(3)
        mail_from, rcpt_tos, data = sink.messages[0]

Knobs (may be changed while it runs):
    fail_code    answer DATA with this code (e.g. 451, 550) instead of accepting
    refuse_rcpt  {address: code} refuse these recipients at RCPT TO
    drop_data    abort the connection at the end of DATA this many times (nothing is recorded), as
                 a crash or a network cut in mid-transaction would
    users        {user: secret} -> offer AUTH PLAIN/LOGIN (secret = password) and XOAUTH2
                 (secret = bearer token) without TLS; sink.logins records (mechanism, user)
    smtputf8     (constructor, default True) offer SMTPUTF8 (RFC 6531); False: a server without it

``stop()`` closes every client connection (as a crashed server would) and ``start()`` again binds
the same port, so outage tests can take the server away and bring it back.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import threading
import time
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

__all__ = ["SmtpSink", "smtp_sink"]


class _Handler:
    def __init__(self, sink: SmtpSink):
        self.sink = sink

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        code = self.sink.refuse_rcpt.get(address) or self.sink.refuse_rcpt.get(address.lower())
        if code:
            return f"{code} {'4.2.0' if code // 100 == 4 else '5.1.1'} <{address}>: recipient refused (test)"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.sink._take_drop():
            server.transport.abort()
            return "421 4.3.0 connection dropped (test)"  # never reaches the client
        code = self.sink.fail_code
        if code:
            return f"{code} {'4.3.0' if code // 100 == 4 else '5.7.1'} message refused (test)"
        data = envelope.original_content if envelope.original_content is not None else envelope.content
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        self.sink._record(envelope.mail_from, list(envelope.rcpt_tos), bytes(data))
        return "250 2.0.0 OK queued"

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        users = self.sink.users or {}
        if len(args) < 2:
            blob = await server.challenge_auth("", encode_to_b64=False)
            if not isinstance(blob, bytes):
                return AuthResult(success=False, handled=False)
            raw = blob
        else:
            raw = args[1].encode("ascii")
        try:
            text = base64.b64decode(raw).decode("utf-8")
            fields = dict(f.split("=", 1) for f in text.split("\x01") if "=" in f)
            user, token = fields.get("user", ""), fields.get("auth", "")
        except Exception:  # noqa: BLE001
            return AuthResult(success=False, handled=False, message="501 5.5.2 cannot decode XOAUTH2")
        if token.startswith("Bearer ") and users.get(user) == token[len("Bearer "):]:
            self.sink.logins.append(("XOAUTH2", user))
            return AuthResult(success=True, auth_data=LoginPassword(user.encode(), b""))
        return AuthResult(success=False, handled=False)


class _Controller(Controller):
    """Learns the real port when asked for port 0, and remembers every session for stop()."""

    def __init__(self, sink: SmtpSink, **kw: Any):
        self._sink = sink
        super().__init__(**kw)

    def factory(self):
        smtp = super().factory()
        self._sink._servers.append(smtp)
        return smtp

    def _create_server(self):
        coro = super()._create_server()

        async def bound():
            server = await coro
            self.port = server.sockets[0].getsockname()[1]
            return server

        return bound()


class SmtpSink:
    def __init__(self, port: int = 0, *, users: dict[str, str] | None = None,
                 tls_context: ssl.SSLContext | None = None, starttls_context: ssl.SSLContext | None = None,
                 smtputf8: bool = True):
        self.host = "127.0.0.1"
        self.port = port
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.fail_code: int | None = None
        self.refuse_rcpt: dict[str, int] = {}
        self.drop_data = 0
        self.users = users
        self.smtputf8 = smtputf8
        self.logins: list[tuple[str, str]] = []
        self._tls_context = tls_context  # implicit TLS on connect
        self._starttls_context = starttls_context  # STARTTLS offered
        self._cond = threading.Condition()
        self._controller: _Controller | None = None
        self._servers: list[SMTP] = []

    # -- recording -------------------------------------------------------------------------------
    def _record(self, mail_from: str, rcpt_tos: list[str], data: bytes) -> None:
        with self._cond:
            self.messages.append((mail_from, rcpt_tos, data))
            self._cond.notify_all()

    def _take_drop(self) -> bool:
        with self._cond:
            if self.drop_data > 0:
                self.drop_data -= 1
                return True
            return False

    def wait_for(self, n: int, timeout: float = 10.0) -> bool:
        """True once at least n messages have arrived; False after timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.messages) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def clear(self) -> None:
        with self._cond:
            self.messages.clear()

    # -- lifecycle -------------------------------------------------------------------------------
    def _authenticator(self, server, session, envelope, mechanism, auth_data):
        if not isinstance(auth_data, LoginPassword) or self.users is None:
            return AuthResult(success=False, handled=False)
        user = auth_data.login.decode("utf-8", "replace")
        if self.users.get(user) == auth_data.password.decode("utf-8", "replace"):
            self.logins.append((mechanism, user))
            return AuthResult(success=True)
        return AuthResult(success=False, handled=False)

    def start(self) -> None:
        if self._controller is not None:
            return
        kw: dict[str, Any] = {
            "handler": _Handler(self),
            "hostname": self.host,
            "port": self.port,
            "server_hostname": "sink.test",  # avoids a getfqdn() DNS lookup
            "ready_timeout": 10.0,
            "enable_SMTPUTF8": self.smtputf8,
        }
        if self.users is not None:
            kw["authenticator"] = self._authenticator
            kw["auth_require_tls"] = False
        if self._tls_context is not None:
            kw["ssl_context"] = self._tls_context
        if self._starttls_context is not None:
            kw["tls_context"] = self._starttls_context
        ctl = _Controller(self, **kw)
        ctl.start()
        self.port = ctl.port  # from now on the same port, also across stop()/start()
        self._controller = ctl

    def stop(self) -> None:
        ctl, self._controller = self._controller, None
        if ctl is None:
            return
        servers, self._servers = self._servers, []

        def drop_clients() -> None:
            for s in servers:
                t = getattr(s, "transport", None)
                if t is not None:
                    with contextlib.suppress(Exception):
                        t.abort()

        with contextlib.suppress(RuntimeError):  # loop already closed
            fut = asyncio.run_coroutine_threadsafe(_call(drop_clients), ctl.loop)
            with contextlib.suppress(Exception):
                fut.result(timeout=5)
        ctl.stop()

    def __enter__(self) -> SmtpSink:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _call(fn) -> None:
    fn()


@pytest.fixture
def smtp_sink():
    """A started SmtpSink, stopped after the test (import it into a conftest to share it)."""
    with SmtpSink() as sink:
        yield sink
