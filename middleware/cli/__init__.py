"""The ``careloop`` command. Each module in this package that defines
``register(subparsers)`` adds its subcommands; ``main`` discovers them. Commands of other
entry-point packages (``careloop sandbox``: :mod:`middleware.sandbox.command`) are handed in
by the program's entry point (``middleware/__main__.py``) as ``extra`` registrars, so this
package imports none of them.

User errors end a command with one line on stderr and a non-zero exit, never a traceback:
argparse mistakes (one line naming the command and ``--help``), :class:`UserError` raised by
a command, :class:`~middleware.storage.schema.SchemaError` (a database at another revision,
missing or empty), malformed ``CARELOOP_*`` settings. Anything else is a bug; it is reported
in one line too, and ``CARELOOP_DEBUG=1`` shows the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

#: ``register(subparsers)`` of a command defined outside this package
Registrar = Callable[[Any], None]


class UserError(Exception):
    """A mistake the user can fix: printed as ``careloop <command>: <message>``, exit status ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error: ``careloop send: argument --port: invalid int value: 'x' (see --help)``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser(extra: Sequence[Registrar] = (), only: str | None = None) -> argparse.ArgumentParser:
    """Every command's parser; with ``only`` (a module of this package), that module's commands
    alone and no ``extra`` (see :func:`_parser_for`)."""
    parser = Parser(prog="careloop", description="FHIR-native integration and trigger middleware")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    names = [only] if only else sorted(m.name for m in pkgutil.iter_modules(__path__))
    for name in names:
        if name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{name}")
        reg = getattr(module, "register", None)
        if reg is not None:
            reg(sub)
    for register in () if only else extra:
        register(sub)
    _name_leaves(parser)
    return parser


def _parser_for(argv: Sequence[str], extra: Sequence[Registrar]) -> argparse.ArgumentParser:
    """The parser for ``careloop COMMAND ...``: when ``COMMAND``'s module (``serve`` ->
    ``serve.py``, ``contact-keys`` -> ``contact_keys.py``) registers it, only that module is
    imported (every module imports what its command needs: importing all of them cost
    ``careloop serve`` a tenth of its start-up); anything else (``--help``, ``events``, ``sandbox``,
    a mistake) gets the whole parser, so help and errors are unchanged."""
    command = argv[0] if argv and not argv[0].startswith("-") else None
    module = command.replace("-", "_") if command else None
    if module and not module.startswith("_") and module in {m.name for m in pkgutil.iter_modules(__path__)}:
        parser = build_parser(only=module)
        if command in _commands(parser):
            return parser
    return build_parser(extra)


def _commands(parser: argparse.ArgumentParser) -> set[str]:
    return {name for action in parser._actions if isinstance(action, argparse._SubParsersAction) for name in action.choices}


def _name_leaves(parser: argparse.ArgumentParser) -> None:
    """Every (sub)command records its full name (``careloop audit export``) for its error lines."""
    parser.set_defaults(prog_name=parser.prog)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _name_leaves(child)


def _command_of(args: argparse.Namespace) -> str:
    return str(getattr(args, "prog_name", None) or "careloop")


def main(argv: list[str] | None = None, extra: Sequence[Registrar] = ()) -> int:
    parser = _parser_for(sys.argv[1:] if argv is None else argv, extra)
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    from pydantic import ValidationError

    from ..storage.schema import SchemaError

    who = _command_of(args)
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except UserError as exc:
        print(f"{who}: {exc}", file=sys.stderr)
        return exc.code
    except SchemaError as exc:  # serve, worker and every command that opens the database
        print(f"careloop: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:  # CARELOOP_* settings (pydantic-settings)
        if exc.title != "Settings":
            return _internal(who, exc)
        print(f"{who}: {settings_problem(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if os.environ.get("CARELOOP_DEBUG"):
            raise
        return _internal(who, exc)


def _internal(who: str, exc: Exception) -> int:
    """A bug, not a user error: still one line (``CARELOOP_DEBUG=1`` re-raises it for the traceback)."""
    if os.environ.get("CARELOOP_DEBUG"):
        raise exc
    first = (str(exc).splitlines() or [""])[0][:300]
    print(f"{who}: internal error: {type(exc).__name__}: {first} (CARELOOP_DEBUG=1 shows the traceback)",
          file=sys.stderr)
    return 1


def settings_problem(exc: object) -> str:
    """One line for a settings validation error: the variable, what was expected, what was given."""
    errors = exc.errors() if hasattr(exc, "errors") else []
    if not errors:
        return f"invalid settings: {exc}"
    e = errors[0]
    field = ".".join(str(p) for p in e.get("loc", ()))
    got = e.get("input")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"CARELOOP_{field.upper()}: {e.get('msg', 'invalid')}, got {got!r}{more}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
