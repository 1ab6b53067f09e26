"""The ``dam`` command (and ``python -m dam``): one subcommand per verb, each in a module of this package.

Errors the user can fix (:class:`dam.errors.DamError`) print one line naming the problem and exit with
status 2; anything else is a bug and keeps its traceback.  ``--debug`` or ``DAM_DEBUG=1`` shows the
traceback of user errors too.  The library logs through :mod:`logging`; the command shows INFO lines on
stderr (``--quiet``: warnings only).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from dam.errors import DamError


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (it prints the whole usage block first), naming where to read more."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def,override]
        """As argparse, but a flag the subcommand does not know is reported by the subcommand (whose --help
        lists the flags it does know), not by ``dam``."""
        argv = sys.argv[1:] if args is None else list(args)
        commands = getattr(self, "commands", {})
        # A flag before the subcommand that dam itself does not know: argparse would complain that the
        # command is missing (or name the flag's value as a bad command) instead of naming the flag.
        for token in argv:
            if token in commands or token == "--":
                break
            if token.startswith("-") and token.split("=")[0] not in self._option_string_actions:
                self.error(f"unrecognized arguments: {token}")
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            where = commands.get(getattr(parsed, "command", None), self)
            where.error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed


def build_parser() -> argparse.ArgumentParser:
    from dam.cli.adversarial import add_adversarial_commands
    from dam.cli.attacks import add_attack_commands
    from dam.cli.detect import add_detect_command
    from dam.cli.probes import add_probe_commands
    from dam.cli.report import add_report_commands
    from dam.cli.sweep import add_sweep_command
    from dam.cli.train import add_train_commands
    from dam.version import __version__

    parser = _Parser(prog="dam", description="Dense Associative Memory classifiers and probes.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors too (or DAM_DEBUG=1)")
    parser.add_argument("--quiet", action="store_true", help="log warnings only")
    sub = parser.add_subparsers(dest="command", required=True)
    parser.commands = sub.choices  # type: ignore[attr-defined]  # for parse_args: which subcommand's --help
    add_train_commands(sub)
    add_probe_commands(sub)
    add_report_commands(sub)
    add_adversarial_commands(sub)
    add_attack_commands(sub)
    add_detect_command(sub)
    add_sweep_command(sub)
    return parser


def _debug(args: argparse.Namespace) -> bool:
    return bool(args.debug) or os.environ.get("DAM_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a bad flag: argparse printed one line; return its status rather than exit
        return int(exc.code or 0)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s",
                        stream=sys.stderr)  # fmt: skip
    try:
        return int(args.func(args) or 0)
    except DamError as exc:
        if _debug(args):
            raise
        print(f"dam {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `dam evaluate RUN | head -1`: the reader left; no traceback, and none at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a shell reports a process ended by SIGPIPE
    except KeyboardInterrupt:
        # training resumes with --resume; every other command reuses what it finished when run again
        resumable = args.command in ("train", "adversarial-train")
        how = "add --resume to the same command" if resumable else "run the same command again"
        print(f"dam {args.command}: interrupted; saved epochs and finished results are kept ({how})", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
