"""The ``careloop`` program (``python -m middleware``, and the ``careloop`` console script): the
CLI's commands plus those of the sandbox. The one place that puts the two entry-point packages
together, so neither imports the other."""
from __future__ import annotations

import sys
from typing import Any


def sandbox(sub: Any) -> None:
    """``careloop sandbox``'s subcommands, imported only when the whole parser is built (the
    sandbox package is not needed by ``careloop serve`` and the other commands)."""
    from .sandbox.command import register

    register(sub)


def main(argv: list[str] | None = None) -> int:
    from .cli import main as cli_main

    return cli_main(argv, extra=[sandbox])


if __name__ == "__main__":
    sys.exit(main())
