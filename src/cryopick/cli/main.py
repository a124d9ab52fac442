"""``cryopick`` entry point.

Every module in this package that defines ``add_args(parser)`` and ``main(args)`` is a subcommand
named after the module (underscores become hyphens); its docstring's first line is the help text.
User errors (:class:`cryopick.errors.CryopickError`) print one line and exit non-zero, without a
traceback; set ``CRYOPICK_DEBUG=1`` to see tracebacks anyway. Ctrl-C exits 130 and SIGTERM 143, each
with one line saying that finished outputs are kept and a rerun resumes.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import signal
import sys
import warnings

import cryopick
import cryopick.cli
from cryopick.errors import CryopickError
from cryopick.runtime import show_warnings


def _command_modules() -> dict[str, str]:
    names = {}
    for info in pkgutil.iter_modules(cryopick.cli.__path__):
        if info.name.startswith("_") or info.name == "main":
            continue
        names[info.name.replace("_", "-")] = f"cryopick.cli.{info.name}"
    return dict(sorted(names.items()))


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (the usage block is for ``-h``), like every other
    user error of the command line; sub-command parsers are of the same class."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (options: {self.prog} -h)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cryopick",
        description="Few-shot particle picking for cryo-EM micrographs and cryo-ET tomograms.",
    )
    parser.add_argument("--version", action="version", version=f"cryopick {cryopick.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in _command_modules().items():
        module = importlib.import_module(module_name)
        if not (hasattr(module, "add_args") and hasattr(module, "main")):
            continue
        doc = (module.__doc__ or "").strip().split("\n")[0]
        p = sub.add_parser(name, help=doc, description=(module.__doc__ or "").strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_args(p)
        p.set_defaults(_run=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not getattr(args, "_run", None):
        parser.print_help()
        return 1
    shown = warnings.showwarning
    if not os.environ.get("CRYOPICK_DEBUG"):
        show_warnings()  # one line each, once per run, above the progress bars
    previous = _stop_on_sigterm()
    try:
        result = args._run(args)
    except CryopickError as exc:
        if os.environ.get("CRYOPICK_DEBUG"):
            raise
        print(f"cryopick {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Terminated:
        print(f"cryopick {args.command}: terminated (SIGTERM); finished outputs are kept, rerun to resume",
              file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print(f"cryopick {args.command}: interrupted; finished outputs are kept, rerun to resume", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown  # a caller's own display (in-process use) is back after the run
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return int(result or 0)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a batch system's time limit): unwinds like Ctrl-C, so the same clean-up runs
    (finished outputs kept, checkpoints in place), and the command says so and exits 143."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def _stop_on_sigterm():
    """Turn SIGTERM into :class:`Terminated` for the command's run; returns the previous handler
    (``None`` where it cannot be set: not the main thread)."""
    try:
        return signal.signal(signal.SIGTERM, _raise_terminated)
    except (ValueError, OSError, AttributeError):
        return None


if __name__ == "__main__":
    sys.exit(main())
