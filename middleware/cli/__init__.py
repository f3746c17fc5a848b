"""The ``careloop`` command. Each module in this package that defines
``register(subparsers)`` adds its subcommands; ``main`` discovers them. Commands of other
entry-point packages (``careloop sandbox``: :mod:`middleware.sandbox.command`) are handed in
by the program's entry point (``middleware/__main__.py``) as ``extra`` registrars, so this
package imports none of them."""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Callable, Sequence
from typing import Any

#: ``register(subparsers)`` of a command defined outside this package
Registrar = Callable[[Any], None]


def build_parser(extra: Sequence[Registrar] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="careloop", description="FHIR-native integration and trigger middleware")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{mod.name}")
        reg = getattr(module, "register", None)
        if reg is not None:
            reg(sub)
    for register in extra:
        register(sub)
    return parser


def main(argv: list[str] | None = None, extra: Sequence[Registrar] = ()) -> int:
    parser = build_parser(extra)
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    from ..storage.schema import SchemaError

    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except SchemaError as exc:  # serve, worker and every command that opens the database
        print(f"careloop: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
