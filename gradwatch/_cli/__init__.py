"""The ``gradwatch`` command line, thin over the library.

Exit status is the CI contract (public, stated in the README): 0 healthy, 1 unhealthy,
2 usage error or no verdict (bad command line, bad target, unreadable log directory, a
check the target stopped, even with ``sys.exit(0)``). Subcommands live in their own
modules; each adds its parser and a ``run(args) -> int``.

argparse (the standard library) parses the command line, so the CLI needs no extra
dependency; ``rich`` (colour, tables, progress) and ``matplotlib`` (``report --plot``)
come with the optional ``cli`` extra, and without them output is plain text.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from gradwatch._cli import _check, _report
from gradwatch._cli._errors import UsageError
from gradwatch._version import __version__

EXIT_OK = 0
EXIT_UNHEALTHY = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradwatch",
        description="See and fix unstable gradients in PyTorch training.",
        epilog="Exit status: 0 healthy, 1 unhealthy, 2 usage error.",
    )
    parser.add_argument("--version", action="version", version=f"gradwatch {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    _check.add_parser(subparsers)
    _report.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (argparse's own errors exit with 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # The report shows every alert; without this, Python's last-resort handler would also
    # print each one to stderr as the library logs it.
    logging.getLogger("gradwatch").addHandler(logging.NullHandler())
    try:
        return int(args.run(args))
    except UsageError as error:
        print(f"gradwatch {args.command}: error: {error.message}", file=sys.stderr)
        if error.details:
            print(error.details.rstrip("\n"), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"gradwatch {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `gradwatch report ... | head`: the reader went away
        return EXIT_OK
