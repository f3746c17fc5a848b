"""The ``careloop`` command. Each module in this package that defines
``register(subparsers)`` adds its subcommands; ``main`` discovers them."""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="careloop", description="FHIR-native integration and trigger middleware")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{mod.name}")
        reg = getattr(module, "register", None)
        if reg is not None:
            reg(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
