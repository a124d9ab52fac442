"""Argument types and shared options of the command line: every number is checked where it is parsed.

argparse turns an ``ArgumentTypeError`` into one line (``cryopick pick: error: argument --threshold:
...``) and exit code 2, so bad numbers never reach the library. Use them as ``type=`` of
``add_argument``::

    p.add_argument("--threshold", type=fraction, help=...)
    p.add_argument("--epochs", type=positive_int, help=...)

Shared vocabulary of 2D and 3D commands (:func:`add_bf16`, :func:`add_threads`, :func:`add_redo`):
``--bf16 auto|on|off``, ``--threads N`` (default: chosen from the cores free now), ``--redo``.
Units are in the flag's name where they are not Å: 3D ``--diameter`` and ``--min-distance`` are Å,
``--diameter-vox`` / ``--min-distance-vox`` voxels of the tomogram as stored. An old spelling stays
accepted through :func:`deprecated` (one warning line, then the new option's value).
CLI flags default to ``None`` so the library's dataclass default is the one source of truth.
"""

from __future__ import annotations

import argparse
import math
import sys


def _number(text: str, kind=float):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def finite_float(text: str) -> float:
    """Any finite number (no NaN or infinity)."""
    return _number(text, float)


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def nonnegative_float(text: str) -> float:
    """A finite number >= 0."""
    value = _number(text, float)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1] (probabilities, thresholds, fractions)."""
    value = _number(text, float)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def open_fraction(text: str) -> float:
    """A number in (0, 1]."""
    value = _number(text, float)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be > 0 and <= 1, got {text}")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def positive_int(text: str) -> int:
    """A whole number >= 1."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def nonnegative_int(text: str) -> int:
    """A whole number >= 0."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def add_tomogram_kind(parser: argparse.ArgumentParser, which: str = "tomograms") -> None:
    """``--tomogram-kind``: which column of a RELION 5 tomograms.star (the kinds RELION writes)."""
    from cryopick.io.formats.relion_tomo import KINDS

    parser.add_argument("--tomogram-kind", choices=tuple(KINDS),
                        help=f"which {which} of --tomograms-star (default: reconstructed)")


def add_bf16(parser: argparse.ArgumentParser) -> None:
    """``--bf16 auto|on|off`` (default auto: bfloat16 where this CPU runs it faster)."""
    parser.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                        help="bfloat16 inference: auto (where this CPU runs it faster), on or off (default: auto)")


def bf16_value(choice: str) -> bool | None:
    """``auto`` -> None (decide at run time), ``on`` -> True, ``off`` -> False."""
    return {"auto": None, "on": True, "off": False}[choice]


def add_threads(parser: argparse.ArgumentParser) -> None:
    """``--threads N`` (default: chosen from the cores free now, see :mod:`cryopick.runtime`)."""
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="CPU threads for PyTorch (default: as many as there are free cores now, "
                             "so a busy machine is not oversubscribed; the choice is printed)")


def add_redo(parser: argparse.ArgumentParser) -> None:
    """``--redo``: do finished inputs again (otherwise a rerun resumes)."""
    parser.add_argument("--redo", action="store_true",
                        help="redo inputs already finished in the output folder (default: skip them, so an "
                             "interrupted run resumes; a run with other settings into the same folder is refused)")


def add_distribute(parser, unit: str = "input") -> None:
    """``--dask ADDRESS``, ``--cluster slurm`` and ``--cluster-config YAML`` (run a batch command on
    Dask; :mod:`cryopick.distribute`); ``parser`` may be an argument group. Check the combination with
    :func:`check_distribute`."""
    parser.add_argument("--dask", metavar="ADDRESS",
                        help="run on Dask: a scheduler address (tcp://HOST:8786) or local[:N] for N worker "
                             f"processes here (default N: one per core), one task per {unit}; needs "
                             "pip install 'cryopick[dask]' (default: run here)")
    parser.add_argument("--cluster", choices=("slurm",),
                        help="start Dask workers through this batch system (with --cluster-config)")
    parser.add_argument("--cluster-config", metavar="YAML",
                        help="SLURMCluster settings (cores, memory, queue, walltime, adapt bounds; see "
                             "`cryopick pick --help`)")


def check_distribute(args: argparse.Namespace) -> None:
    """Refuse ``--cluster-config`` without ``--cluster`` (the rest is checked by
    :func:`cryopick.distribute.check_options` before the model is loaded)."""
    from cryopick.errors import CryopickError

    if getattr(args, "cluster_config", None) is not None and getattr(args, "cluster", None) is None:
        raise CryopickError("--cluster-config only applies with --cluster")


def deprecated(new: str, note: str = "same meaning") -> type[argparse.Action]:
    """``action=`` of an old option spelling: stores the value like ``new`` (give the same ``dest``) and
    prints one line saying what to write instead (on stderr at parse time, before logging is set up)."""

    class Deprecated(argparse._StoreAction):
        def __call__(self, parser, namespace, values, option_string=None):
            sys.stderr.write(f"cryopick: warning: {option_string} is deprecated; use {new} ({note})\n")
            setattr(namespace, self.dest, values)

    return Deprecated
