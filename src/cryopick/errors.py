"""User-facing errors.

Anything the user can fix (a wrong file, a missing pixel size, a bad option) is raised as
:class:`CryopickError`. The CLI prints its message on one line and exits with a non-zero code,
without a traceback. Programming errors stay ordinary exceptions and do show a traceback.
"""

from __future__ import annotations


class CryopickError(Exception):
    """An error caused by user input, with a message that names the file and the fix."""

    exit_code = 2


class FinishedWithFailures(CryopickError):
    """A batch command finished, but some of its inputs could not be processed (each listed, with its
    error, in the run's ``summary.json``): exit code 3, so scripts tell it from a run that did not
    start (2) and from a clean one (0)."""

    exit_code = 3


class ConfigError(CryopickError, ValueError):
    """A bad value in a settings dataclass (:mod:`cryopick.config`): the message names the class and the field.
    Also a ``ValueError``, as the library's checks of programming arguments are."""
