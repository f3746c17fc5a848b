"""Every careloop command answers a user's mistake with one clear line on stderr and a
non-zero exit, never a traceback.

The commands are enumerated from the CLI itself (``build_parser``): a new command or
subcommand without cases here fails ``test_every_command_has_cases``. Each case runs the
command in-process with one bad input (missing file, bad YAML, bad time, unknown id,
unreachable URL on a closed loopback port, bad flag value, bad CARELOOP_* setting, missing
or empty database).
"""
from __future__ import annotations

import argparse
import socket
from pathlib import Path
from typing import Any

import pytest

from middleware.__main__ import main as cli
from middleware.cli import build_parser
from middleware.sandbox.command import register as sandbox_commands
from middleware.storage.db import init_db, make_engine
from tests.conftest import FIXTURES


def leaves(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[str]:
    """Every runnable command path ('db upgrade', 'send', ...)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [" ".join(prefix)]
    out: list[str] = []
    for name, p in subs[0].choices.items():
        out += leaves(p, (*prefix, name))
    return out


# {MISSING_DB}: a SQLite file that does not exist; {EMPTY_DB}: a file that is not a careloop database;
# {DB}: an initialized, empty careloop database; {CLOSED}: a loopback port nobody listens on;
# {MAPPINGS}: a copy of the bundled mappings; {BAD_MAPPINGS}: one with a YAML syntax error; {TMP}: a fresh folder.
# Each case: (argv, a text the one line must contain[, env overrides[, most stderr lines]]).
CASES: dict[str, list[tuple[Any, ...]]] = {
    "audit export": [
        (["--patient", "P1", "--database", "{MISSING_DB}"], "no careloop database at"),
        (["--patient", "P1", "--database", "{EMPTY_DB}"], "is empty (never initialized"),
        (["--patient", "P1", "--format", "xml"], "invalid choice: 'xml'"),
        (["--patient", "P1", "--database", "{DB}", "--output", "{TMP}/no/such/dir/x.json"], "cannot write"),
    ],
    "audit admin": [
        (["--database", "{DB}", "--since", "last tuesday"], "since"),
        (["--database", "{DB}", "--limit", "many"], "invalid int value: 'many'"),
        (["--database", "{MISSING_DB}"], "no careloop database at"),
    ],
    "backfill": [
        (["--source", "nope", "--mappings", "{MAPPINGS}", "--database", "{DB}"], "unknown source 'nope'"),
        (["--source", "default", "--mappings", "{MAPPINGS}", "--database", "{DB}"], "127.0.0.1:{CLOSED}",
         {"CARELOOP_FHIR_BASE_URL": "http://127.0.0.1:{CLOSED}/fhir"}),
        (["--source", "default", "--mappings", "{MAPPINGS}", "--database", "{MISSING_DB}"], "no careloop database at",
         {"CARELOOP_FHIR_BASE_URL": "http://127.0.0.1:{CLOSED}/fhir"}),
        (["--source", "default", "--mappings", "{BAD_MAPPINGS}", "--database", "{DB}"], "error", {}, 2),
        (["--source", "default", "--page", "ten"], "invalid int value: 'ten'"),
    ],
    "contact-keys export": [
        (["--from", "v0", "--to", "v1", "--out", "{TMP}/m.csv", "--database", "{DB}"], "v0"),
        (["--from", "v1", "--to", "v1", "--out", "{TMP}/m.csv", "--database", "{MISSING_DB}"], "no careloop database at"),
        (["--from", "v1", "--to", "v1", "--out", "{TMP}/no/such/dir/m.csv", "--database", "{DB}"], "No such file"),
        (["--from", "v1"], "the following arguments are required: --to, --out"),
    ],
    "contact-keys resolve": [
        (["ck_0000", "--database", "{MISSING_DB}"], "no careloop database at"),
        (["ck_0000", "--database", "{DB}"], "no known patient has this key"),
        (["ck_0000", "--database", "{DB}"], "CARELOOP_CONTACT_KEY_SECRETS", {"CARELOOP_CONTACT_KEY_SECRETS": "garbage"}),
    ],
    "db upgrade": [
        (["--database", "postgresql://careloop@127.0.0.1:{CLOSED}/careloop"], "127.0.0.1"),
        (["--database", "{TMP}/no/such/dir/../../x.db", "--no-backup=1"], "ignored explicit argument"),
    ],
    "db current": [
        (["--database", "{MISSING_DB}"], "no careloop database at"),
        (["--database", "postgresql://careloop@127.0.0.1:{CLOSED}/careloop"], "cannot read the database"),
    ],
    "db history": [
        (["--verbose"], "unrecognized arguments: --verbose"),
    ],
    "deliveries list": [
        (["--database", "{MISSING_DB}"], "no careloop database at"),
        (["--database", "{DB}", "--limit", "x"], "invalid int value: 'x'"),
        (["--database", "{EMPTY_DB}"], "is empty (never initialized"),
    ],
    "deliveries replay": [
        (["--database", "{DB}"], "give --id, --destination"),
        (["--id", "x"], "invalid int value: 'x'"),
        (["--destination", "webhook", "--database", "{MISSING_DB}"], "no careloop database at"),
        (["--status", "gone"], "invalid choice: 'gone'"),
    ],
    "deliveries resume": [
        (["webhook", "--database", "{MISSING_DB}"], "no careloop database at"),
        (["--database", "{DB}"], "the following arguments are required: name"),
    ],
    "deliveries alerts": [
        (["--database", "{MISSING_DB}"], "no careloop database at"),
    ],
    "deliveries run": [
        (["--until-idle", "--database", "{MISSING_DB}", "--mappings", "{MAPPINGS}"], "no careloop database at"),
        (["--until-idle", "--database", "{DB}", "--mappings", "{BAD_MAPPINGS}"], "error", {}, 2),
        (["--lease-s", "long"], "invalid float value: 'long'"),
    ],
    "explain": [
        (["{TMP}/missing.hl7"], "no such file: {TMP}/missing.hl7"),
        ([str(FIXTURES / "hl7" / "siu_s12_v23.hl7"), "--now", "tomorrow", "--mappings", "{MAPPINGS}"],
         "--now 'tomorrow' is not a time"),
        ([str(FIXTURES / "hl7" / "siu_s12_v23.hl7"), "--mappings", "{TMP}/nomappings"], "nomappings"),
        ([str(FIXTURES / "hl7" / "siu_s12_v23.hl7"), "--mappings", "{BAD_MAPPINGS}"], "error", {}, 2),
        ([str(FIXTURES / "hl7" / "siu_s12_v23.hl7"), "--horizon-days", "week"], "invalid float value: 'week'"),
    ],
    "mappings validate": [
        (["{TMP}/nomappings"], "nomappings", {}, 2),
        (["{BAD_MAPPINGS}"], "broken.yaml:3:4: error", {}, 2),
    ],
    "mappings schema": [
        (["--write", "{TMP}/afile"], "cannot write"),
    ],
    "mappings test": [
        (["{TMP}/nomappings"], "nomappings", {}, 2),
        (["{BAD_MAPPINGS}"], "error", {}, 3),
    ],
    "mappings reload": [
        (["--url", "http://127.0.0.1:{CLOSED}"], "127.0.0.1:{CLOSED}"),
        (["--url", "not a url"], "not a url"),
    ],
    "events": [
        (["--json"], "unrecognized arguments: --json"),
    ],
    "report": [
        (["--database", "{MISSING_DB}"], "no careloop database at"),
        (["--database", "{DB}", "noshow-rebooked-41d"], "no entries for goal 'noshow-rebooked-41d'"),
        (["--database", "{DB}", "--format", "measure"], "needs --start and --end as YYYY-MM-DD"),
        (["--database", "{DB}", "--format", "xml"], "invalid choice: 'xml'"),
        (["--database", "{DB}", "--export", "{TMP}/x.csv"], "--export needs a GOAL"),
    ],
    "reprocess": [
        (["--database", "{MISSING_DB}", "--mappings", "{MAPPINGS}"], "no careloop database at"),
        (["--database", "{EMPTY_DB}", "--mappings", "{MAPPINGS}"], "is empty (never initialized"),
        (["--database", "{DB}", "--mappings", "{MAPPINGS}"], "holds no stored events"),
        (["--database", "{DB}", "--mappings", "{MAPPINGS}", "--since", "yesterday"], "--since 'yesterday' is not a time"),
        (["--database", "{DB}", "--mappings", "{MAPPINGS}", "--rule", "fuh-folowup-7d"], "did you mean 'fuh-followup-7d'?"),
        (["--database", "{DB}", "--mappings", "{BAD_MAPPINGS}"], "error", {}, 2),
    ],
    "retention run": [
        (["--database", "{MISSING_DB}"], "no careloop database at"),
        (["--days", "thirty"], "invalid int value: 'thirty'"),
        (["--database", "{DB}"], "CARELOOP_RETENTION_DAYS", {"CARELOOP_RETENTION_DAYS": "forever"}),
    ],
    "sandbox up": [
        (["--runtime", "podman"], "invalid choice: 'podman'"),
        (["--port", "http"], "invalid int value: 'http'"),
    ],
    "sandbox down": [
        (["--force"], "unrecognized arguments: --force"),
    ],
    "sandbox status": [
        (["--json"], "unrecognized arguments: --json"),
    ],
    "sandbox seed": [
        ([], "no sandbox of ours is running"),
        (["--fhir-url", "http://127.0.0.1:{CLOSED}/fhir", "--database-url", "sqlite:///{TMP}/sb.db"], "127.0.0.1:{CLOSED}"),
        (["--patients", "some"], "invalid int value: 'some'"),
    ],
    "sandbox scenario": [
        (["discharge-no-folowup"], "unknown scenario 'discharge-no-folowup'"),
        (["all"], "no sandbox of ours is running"),
    ],
    "secrets init": [
        (["--env-file", "{TMP}/no/such/dir/.env"], "cannot write"),
    ],
    "send": [
        (["{TMP}/missing.hl7", "--port", "{CLOSED}"], "missing.hl7"),
        ([str(FIXTURES / "hl7" / "siu_s12_v23.hl7"), "--port", "{CLOSED}"], "127.0.0.1:{CLOSED}"),
        (["--samples", "--port", "mllp"], "invalid int value: 'mllp'"),
        ([], "give files or --samples"),
    ],
    "serve": [
        (["--mappings", "{MAPPINGS}", "--database", "{DB}"], "CARELOOP_HTTP_PORT", {"CARELOOP_HTTP_PORT": "eighty"}),
        (["--mappings", "{BAD_MAPPINGS}", "--database", "{DB}", "--http-port", "{CLOSED}", "--mllp-port", "{CLOSED}"],
         "not starting", {}, 2),
        (["--http-port", "x"], "invalid int value: 'x'"),
        (["--mappings", "{MAPPINGS}", "--database", "{DB}"], "set both CARELOOP_TLS_CERT_FILE and CARELOOP_TLS_KEY_FILE",
         {"CARELOOP_TLS_CERT_FILE": "{TMP}/afile"}),
        (["--mappings", "{MAPPINGS}", "--database", "{DB}"], "cannot use the TLS certificate {TMP}/afile",
         {"CARELOOP_TLS_CERT_FILE": "{TMP}/afile", "CARELOOP_TLS_KEY_FILE": "{TMP}/afile"}),
    ],
    "users add": [
        (["x", "--role", "wizard", "--users-file", "{TMP}/users.yaml"], "unknown role or permission 'wizard'"),
        (["x"], "the following arguments are required: --role"),
        (["x", "--role", "analyst", "--users-file", "{TMP}/users.yaml", "--database", "{MISSING_DB}"], "no careloop database at"),
    ],
    "users passwd": [
        (["ghost", "--users-file", "{TMP}/users.yaml", "--database", "{DB}"], "no user 'ghost'"),
        (["ghost", "--users-file", "{TMP}/afile"], "expected a 'users:' list"),
    ],
    "users remove": [
        (["ghost", "--users-file", "{TMP}/users.yaml", "--database", "{DB}"], "no user 'ghost'"),
    ],
    "users list": [
        (["--users-file", "{TMP}/users.yaml", "--database", "{MISSING_DB}"], "no careloop database at"),
    ],
    "sink": [
        (["--port", "x"], "invalid int value: 'x'"),
        (["--port", "{BUSY}"], "{BUSY}"),
    ],
    "subscriptions apply": [
        (["--source", "nope", "--mappings", "{MAPPINGS}"], "unknown source 'nope'"),
        (["--mappings", "{MAPPINGS}", "--wait", "1"], "127.0.0.1:{CLOSED}",
         {"CARELOOP_FHIR_BASE_URL": "http://127.0.0.1:{CLOSED}/fhir", "CARELOOP_FHIR_TOKEN_DEFAULT": "t"}),
        (["--wait", "soon"], "invalid float value: 'soon'"),
    ],
    "subscriptions status": [
        (["--source", "nope", "--mappings", "{MAPPINGS}"], "unknown source 'nope'"),
        (["--mappings", "{MAPPINGS}", "--database", "{MISSING_DB}"], "no careloop database at",
         {"CARELOOP_FHIR_BASE_URL": "http://127.0.0.1:{CLOSED}/fhir"}, 2),
    ],
    "worker": [
        (["--mappings", "{MAPPINGS}", "--database", "{MISSING_DB}"], "no careloop database at"),
        (["--mappings", "{MAPPINGS}", "--database", "{DB}"], "CARELOOP_WORKER_POLL_INTERVAL_S",
         {"CARELOOP_WORKER_POLL_INTERVAL_S": "often"}),
        (["--metrics-port", "x"], "invalid int value: 'x'"),
    ],
}


def test_every_command_has_cases() -> None:
    commands = set(leaves(build_parser(extra=[sandbox_commands])))  # as the careloop program builds it
    assert commands - set(CASES) == set(), "commands without user-error cases in tests/cli/test_user_errors.py"
    assert set(CASES) - commands == set(), "cases for commands the CLI does not have"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    import shutil

    from tests.conftest import REPO

    tmp = tmp_path_factory.mktemp("cli-errors")
    db = tmp / "care.db"
    init_db(make_engine(f"sqlite:///{db}"))
    empty = tmp / "empty.db"
    empty.write_bytes(b"")
    shutil.copytree(REPO / "mappings", tmp / "mappings")
    shutil.copytree(REPO / "mappings", tmp / "bad-mappings")
    (tmp / "bad-mappings" / "rules" / "broken.yaml").write_text("rules:\n  - id: broken\n   on: [encounter.finished]\n")
    (tmp / "afile").write_text("x")
    return {"DB": str(db), "MISSING_DB": str(tmp / "missing" / "care.db"), "EMPTY_DB": str(empty),
            "MAPPINGS": str(tmp / "mappings"), "BAD_MAPPINGS": str(tmp / "bad-mappings"), "TMP": str(tmp)}


def _params() -> list[Any]:
    out = []
    for command, cases in CASES.items():
        for i, case in enumerate(cases):
            out.append(pytest.param(command, *case[:2], case[2] if len(case) > 2 else {}, case[3] if len(case) > 3 else 1,
                                    id=f"{command.replace(' ', '-')}-{i}"))
    return out


@pytest.mark.parametrize("command, argv, expect, env, max_lines", _params())
def test_user_error_is_one_clear_line(command: str, argv: list[str], expect: str, env: dict[str, str], max_lines: int,
                                      places: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    values = {**places, "CLOSED": str(_closed_port()), "BUSY": str(busy.getsockname()[1])}

    def fill(text: str) -> str:
        for k, v in values.items():
            text = text.replace("{" + k + "}", v)
        return text

    monkeypatch.chdir(tmp_path)  # nothing may appear in the current folder
    for var in ("CARELOOP_DATABASE_URL", "CARELOOP_FHIR_BASE_URL", "CARELOOP_API_TOKEN", "CARELOOP_CONTACT_KEY_SECRETS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CARELOOP_FHIR_REQUEST_TIMEOUT_S", "3")
    for k, v in env.items():
        monkeypatch.setenv(k, fill(v))
    try:
        try:
            rc = cli([*command.split(), *(fill(a) for a in argv)])
        except SystemExit as exc:  # argparse
            rc = exc.code if isinstance(exc.code, int) else 1
    finally:
        busy.close()
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc != 0, (out, err)
    assert "Traceback" not in out + err and "internal error" not in err, err
    assert 1 <= len(lines) <= max_lines, err
    assert fill(expect) in err, err
    assert not (tmp_path / ".careloop").exists(), "a command created .careloop/ in the current folder"


def test_a_bug_is_one_line_too_and_careloop_debug_shows_the_traceback(monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import middleware.cli.mappings as m

    def broken(args: argparse.Namespace) -> int:
        raise KeyError("boom")

    monkeypatch.setattr(m, "cmd_events", broken)
    monkeypatch.delenv("CARELOOP_DEBUG", raising=False)
    assert cli(["events"]) == 1
    assert capsys.readouterr().err == ("careloop events: internal error: KeyError: 'boom' "
                                       "(CARELOOP_DEBUG=1 shows the traceback)\n")
    monkeypatch.setenv("CARELOOP_DEBUG", "1")
    with pytest.raises(KeyError):
        cli(["events"])
