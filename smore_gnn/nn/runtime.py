"""Runtime choices: a torch thread count that does not stall S'MoRE's many small routing
ops, and compiling every adapter of a model (:func:`compile_adapters`).

Importing ``smore_gnn`` never changes global torch state; applications (the CLI, the
notebooks, the benchmarks) call :func:`choose_threads` once, early, and may pass an explicit
count. The default is one thread on machines with at most two physical cores (OpenMP worker
threads spin-wait between the many small routing ops, which stalls them when the other core
is busy: bench/NOTES.md) and ``physical cores - 1`` otherwise (one core left
for the OS, data loading and other processes).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from smore_gnn.nn.layer import SMoRELinear
from smore_gnn.nn.settings import SpeedSettings

__all__ = ["choose_threads", "compile_adapters", "physical_cores", "set_speed_settings"]

_SYSFS_CPU = Path("/sys/devices/system/cpu")


def _usable_cpus() -> list[int]:
    """Logical CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads of one core count once).

    Reads the Linux sysfs CPU topology of the CPUs in the affinity mask; where that is not
    available, counts logical CPUs instead.
    """
    cpus = _usable_cpus()
    cores = set()
    for cpu in cpus:
        topology = _SYSFS_CPU / f"cpu{cpu}" / "topology"
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            return max(1, len(cpus))
        cores.add((package, core))
    return max(1, len(cores))


def choose_threads(requested: int | None = None, verbose: bool = True) -> int:
    """Set ``torch.set_num_threads`` for this process and return the count chosen.

    Args:
        requested: An explicit thread count (>= 1), or ``None`` for the default: 1 on machines
            with <= 2 physical cores, else physical cores - 1.
        verbose: Print ``"torch threads: N (reason)"``.

    Returns:
        The number of threads now set.

    Raises:
        TypeError: If ``requested`` is not an int or None.
        ValueError: If ``requested`` is < 1.
    """
    if requested is not None and (isinstance(requested, bool) or not isinstance(requested, int)):
        raise TypeError(
            f"requested threads must be an int or None, got {type(requested).__name__} "
            f"{requested!r}; pass e.g. 1, or None for the default"
        )
    if requested is None:
        cores = physical_cores()
        if cores <= 2:
            threads = 1
            reason = (
                f"default for {cores} physical core(s): one thread avoids OpenMP spin-wait "
                "stalls in the many small routing ops"
            )
        else:
            threads = cores - 1
            reason = f"default: {cores} physical cores minus one"
    elif requested < 1:
        raise ValueError(
            f"requested threads must be >= 1, got {requested}; pass None for the default"
        )
    else:
        threads, reason = requested, "requested"
    torch.set_num_threads(threads)
    if verbose:
        print(f"torch threads: {threads} ({reason})", flush=True)
    return threads


def compile_adapters(model: nn.Module, **compile_kwargs) -> int:
    """``torch.compile`` (``nn.Module.compile``, with ``compile_kwargs``) every ``SMoRELinear``
    of ``model`` in place; returns how many. One graph, no breaks, compiled = eager; each new
    input shape compiles first (tens of seconds on a CPU). ValueError if there is none."""
    layers = [m for m in model.modules() if isinstance(m, SMoRELinear)]
    if not layers:
        raise ValueError(f"compile_adapters found no SMoRELinear in {type(model).__name__}")
    for layer in layers:
        layer.compile(**compile_kwargs)
    return len(layers)


def set_speed_settings(model: nn.Module, settings: SpeedSettings) -> int:
    """Give every ``SMoRELinear`` of ``model`` these :class:`SpeedSettings`; returns how many.
    ValueError if there is none."""
    layers = [m for m in model.modules() if isinstance(m, SMoRELinear)]
    if not layers:
        raise ValueError(f"set_speed_settings found no SMoRELinear in {type(model).__name__}")
    for layer in layers:
        layer.settings = settings
    return len(layers)
