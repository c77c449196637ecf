"""Config: fixed keys, relative paths, secrets, and `file: key: reason` errors."""

from __future__ import annotations

import pytest

from mailflow import config, resources


def test_full_example_loads(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text((resources.PKG / "example.toml").read_text(encoding="utf-8"))
    (tmp_path / "rules").mkdir()
    (tmp_path / "templates").mkdir()
    c = config.load(p)
    assert c.data_dir == (tmp_path / "data").resolve()
    assert c.prefix == "CW" and c.timezone == "Asia/Shanghai"
    assert c.is_vip("anyone@bigclient.example") and c.is_vip("BOSS@bigclient.example")
    assert not c.is_vip("x@other.example")


def test_mailboxes_staff_and_secrets(tmp_path, monkeypatch):
    p = tmp_path / "c.toml"
    (tmp_path / "pw").write_text("from-file\n")
    p.write_text('''
[[mailbox]]
name = "a"
host = "imap.example"
user = "a@example.com"
password_env = "MF_PW"
after = "move:Done"
[[mailbox]]
name = "b"
host = "imap.example"
tls = "starttls"
password_file = "pw"
[mailbox.smtp]
host = "smtp.b.example"
[smtp]
host = "smtp.example"
password = "s3cret"
[[staff]]
email = "Alice@Example.com"
teams = ["tech"]
role = "lead"
''')
    monkeypatch.setenv("MF_PW", "from-env")
    c = config.load(p)
    a, b = c.mailboxes
    assert a.password.get() == "from-env" and a.address == "a@example.com" and a.port == 993
    assert b.port == 143 and c.mailboxes[1].smtp.host == "smtp.b.example"
    assert c.smtp_for("a").host == "smtp.example" and c.smtp_for("b").host == "smtp.b.example"
    assert "s3cret" not in repr(c)
    assert c.staff[0].email == "alice@example.com" and c.staff[0].name == "alice"


def test_errors_name_file_and_key(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('''
colour = "blue"
[tickets]
prefix = 7
[sla]
first_response_hours = { urgent = -1, asap = 2 }
[[mailbox]]
host = "x"
port = 70000
auth = "xoauth2"
[[staff]]
name = "nobody"
''')
    with pytest.raises(config.ConfigError) as e:
        config.load(p)
    text = "\n".join(e.value.problems)
    for key in ("colour: unknown key", "tickets.prefix: expected str", "sla.first_response_hours.urgent",
                "sla.first_response_hours.asap", "mailbox[0].name: required", "mailbox[0].port",
                "mailbox[0].token_command", "staff[0].email"):
        assert f"{p}: {key}" in text, key


def test_toml_syntax_error_is_reported(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[storage\n")
    with pytest.raises(config.ConfigError) as e:
        config.load(p)
    assert str(p) in e.value.problems[0] and "TOML" in e.value.problems[0]


def test_password_file_expands_credentials_directory(tmp_path, monkeypatch):
    (tmp_path / "imap").write_text("s3cret\n")
    s = config.Secret(file="${CREDENTIALS_DIRECTORY}/imap")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert s.get() == "s3cret"
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(config.ConfigError) as e:
        s.get()
    assert "CREDENTIALS_DIRECTORY not set" in e.value.problems[0]


def test_values_that_would_break_at_runtime_are_rejected(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('''
[outbound]
backoff_initial = 0
trusted_authserv_ids = [1]
[routing]
escalation_chain = ["Boss <boss@x.example>"]
[[mailbox]]
name = "a"
host = "imap.example"
address = "Support <support@x.example>"
poll_interval = nan
timeout = -1
[[staff]]
email = "a@x.example"
teams = [3]
''')
    with pytest.raises(config.ConfigError) as e:
        config.load(p)
    text = "\\n".join(e.value.problems)
    for key in ("outbound.backoff_initial", "outbound.trusted_authserv_ids[0]", "routing.escalation_chain[0]",
                "mailbox[0].address", "mailbox[0].poll_interval", "mailbox[0].timeout", "staff[0].teams"):
        assert f"{p}: {key}:" in text, key


def test_storage_backend_postgresql(tmp_path):
    (tmp_path / "pw").write_text("s3cret\n")
    p = tmp_path / "c.toml"
    p.write_text('[storage]\nbackend = "postgresql"\ndsn = "postgresql://mf@db.example/mailflow"\n'
                 f'password_file = "{tmp_path / "pw"}"\nsslmode = "verify-full"\nconnect_timeout = 5\npool_size = 8\n')
    c = config.load(p)
    assert c.backend == "postgresql" and c.pg.pool_size == 8
    from psycopg.conninfo import conninfo_to_dict

    d = conninfo_to_dict(c.pg.conninfo())
    assert d["password"] == "s3cret" and d["sslmode"] == "verify-full" and d["connect_timeout"] == "5"
    assert d["host"] == "db.example" and d["dbname"] == "mailflow"


@pytest.mark.parametrize("text,err", [
    ('backend = "mysql"\n', "storage.backend"),
    ('backend = "postgresql"\n', "storage.dsn: required"),
    ('dsn = "postgresql://x@y/z"\n', "storage.dsn: only with"),
    ('backend = "postgresql"\ndsn = "db.example"\n', "not a PostgreSQL connection string"),
    ('backend = "postgresql"\ndsn = "postgresql://x@y/z"\npool_size = 0\n', "storage.pool_size"),
])
def test_storage_backend_errors(tmp_path, text, err):
    p = tmp_path / "c.toml"
    p.write_text("[storage]\n" + text)
    with pytest.raises(config.ConfigError) as e:
        config.load(p)
    assert any(err in x for x in e.value.problems), e.value.problems
