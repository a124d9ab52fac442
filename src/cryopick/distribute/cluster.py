"""Dask clusters started through a batch system: ``--cluster slurm --cluster-config site.yaml``.

The YAML file holds the keyword arguments of ``dask_jobqueue.SLURMCluster`` (one SLURM job = one or
more Dask workers) plus the adaptive-scaling bounds::

    # site.yaml: 8 cores / 32 GB per SLURM job, 2 workers per job, 0 to 20 jobs as the queue needs
    queue: short                 # SLURM partition (-p)
    account: my_lab              # -A (optional)
    cores: 8                     # per job, required
    memory: 32GB                 # per job, required
    processes: 2                 # Dask workers per job (default 1)
    walltime: "02:00:00"
    job_extra_directives: ["--gres=gpu:1"]
    local_directory: /scratch/$USER
    adapt: {minimum_jobs: 0, maximum_jobs: 20}

:func:`load_cluster_config` checks the file (unknown keys, types, units) and names the key and the
fix in one line; :func:`start_cluster` starts the cluster and turns on adaptive scaling (jobs are
submitted as tasks wait and cancelled when idle). The file is validated without SLURM, so it can be
tested anywhere; starting jobs needs ``sbatch``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from cryopick.errors import CryopickError

CLUSTERS = ("slurm",)
#: SLURMCluster / Job keywords accepted in the file (a site may need others: extend here).
SLURM_KEYS = {
    "queue", "account", "project", "walltime", "job_cpu", "job_mem", "cores", "memory", "processes", "nanny",
    "protocol", "interface", "death_timeout", "local_directory", "worker_extra_args", "job_extra_directives",
    "job_script_prologue", "job_directives_skip", "log_directory", "shebang", "python", "job_name",
    "scheduler_options", "shared_temp_directory", "name",
}
ADAPT_KEYS = {"minimum_jobs", "maximum_jobs", "minimum", "maximum", "interval", "wait_count"}
_WALLTIME = re.compile(r"^(\d+-)?\d{1,3}(:\d{2}){0,2}$")


def _fail(path: Path, key: str, message: str) -> CryopickError:
    return CryopickError(f"{path}: {key}: {message}")


def _positive_int(path: Path, key: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(path, key, f"must be a whole number >= 1, got {value!r}")
    return value


def _nonneg_int(path: Path, key: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _fail(path, key, f"must be a whole number >= 0, got {value!r}")
    return value


def _string_list(path: Path, key: str, value) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(path, key, f"must be a list of strings, got {value!r}")
    return value


def load_cluster_config(path: str | os.PathLike, kind: str = "slurm") -> tuple[dict[str, Any], dict[str, Any]]:
    """``(cluster keyword arguments, adapt keyword arguments)`` from a site YAML file (see the module
    docstring). A :class:`CryopickError` names the file, the key and the fix."""
    if kind not in CLUSTERS:
        raise CryopickError(f"--cluster {kind!r}: supported: {', '.join(CLUSTERS)}")
    path = Path(path)
    try:
        import yaml

        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise CryopickError(f"--cluster-config {path}: cannot read it ({exc.strerror or exc})") from None
    except ImportError:
        raise CryopickError("--cluster-config needs PyYAML: pip install 'cryopick[dask]'") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise CryopickError(f"{path}: not valid YAML{where}; fix the file (see `cryopick pick --help`)") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CryopickError(f"{path}: expected a mapping of SLURMCluster settings (key: value lines), "
                            f"got a {type(data).__name__}")
    data = dict(data.get(kind, data)) if isinstance(data.get(kind), dict) else dict(data)
    adapt = data.pop("adapt", {}) or {}
    if not isinstance(adapt, dict):
        raise _fail(path, "adapt", "must be a mapping like {minimum_jobs: 0, maximum_jobs: 10}")
    unknown = sorted(set(data) - SLURM_KEYS)
    if unknown:
        raise _fail(path, unknown[0], f"unknown setting; known: {', '.join(sorted(SLURM_KEYS))}, adapt")
    bad_adapt = sorted(set(adapt) - ADAPT_KEYS)
    if bad_adapt:
        raise _fail(path, f"adapt.{bad_adapt[0]}", f"unknown; known: {', '.join(sorted(ADAPT_KEYS))}")
    for key in ("cores", "memory"):
        if key not in data:
            raise _fail(path, key, "is required (cores and memory of one SLURM job, e.g. cores: 8, memory: 32GB)")
    _positive_int(path, "cores", data["cores"])
    processes = _positive_int(path, "processes", data.setdefault("processes", 1))
    if processes > data["cores"]:
        raise _fail(path, "processes", f"{processes} workers per job cannot share {data['cores']} cores")
    memory = str(data["memory"])
    try:
        from dask.utils import parse_bytes

        if parse_bytes(memory) <= 0:
            raise ValueError
    except (ValueError, TypeError):
        raise _fail(path, "memory", f"must be an amount like 32GB or 500MiB, got {memory!r}") from None
    except ImportError:
        raise CryopickError(f"--cluster needs Dask and dask-jobqueue: {_hint()}") from None
    data["memory"] = memory
    if "walltime" in data and not _WALLTIME.match(str(data["walltime"])):
        raise _fail(path, "walltime", f"must be SLURM time like \"02:00:00\" or \"1-00:00:00\", got {data['walltime']!r}"
                    " (quote it in YAML)")
    for key in ("job_extra_directives", "job_script_prologue", "worker_extra_args", "job_directives_skip"):
        if key in data:
            data[key] = _string_list(path, key, data[key])
    lo = adapt.pop("minimum", None)
    hi = adapt.pop("maximum", None)
    adapt.setdefault("minimum_jobs", 0 if lo is None else lo)
    adapt.setdefault("maximum_jobs", 10 if hi is None else hi)
    _nonneg_int(path, "adapt.minimum_jobs", adapt["minimum_jobs"])
    _positive_int(path, "adapt.maximum_jobs", adapt["maximum_jobs"])
    if adapt["minimum_jobs"] > adapt["maximum_jobs"]:
        raise _fail(path, "adapt", f"minimum_jobs ({adapt['minimum_jobs']}) > maximum_jobs ({adapt['maximum_jobs']})")
    return data, adapt


def _hint() -> str:
    from cryopick.distribute.dask_engine import INSTALL_HINT

    return INSTALL_HINT


def make_cluster(kind: str, config: str | os.PathLike):
    """A started (not yet scaled) dask-jobqueue cluster from a checked config file, and its adapt
    keyword arguments."""
    kwargs, adapt = load_cluster_config(config, kind)
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise CryopickError(f"--cluster {kind} needs dask-jobqueue: {_hint()}") from None
    kwargs.setdefault("scheduler_options", {"dashboard_address": None})
    return SLURMCluster(**kwargs), adapt


def start_cluster(kind: str, config: str | os.PathLike):
    """``(client, close)`` for a SLURM cluster with adaptive scaling (see the module docstring)."""
    from cryopick.distribute.dask_engine import require_dask

    distributed = require_dask("--cluster")
    cluster, adapt = make_cluster(kind, config)
    cluster.adapt(**adapt)
    client = distributed.Client(cluster)

    def close() -> None:
        client.close()
        cluster.close()

    return client, close
