"""Execute the notebooks (nbclient) at a given size and print each one's wall time.

    .venv/bin/python scripts/run_notebooks.py                 # all, default size (make notebooks)
    .venv/bin/python scripts/run_notebooks.py --size full 03  # names matched by substring
    SMORE_NOTEBOOK_SIZE=full make notebooks                    # the longer runs

Each notebook runs in a fresh kernel of this interpreter with ``SMORE_NOTEBOOK_SIZE`` set and
its figures written to ``--out`` (default: ``smore_notebook_out`` in the temp folder). The
committed notebooks are never modified; ``--executed DIR`` saves the executed copies there.
Exits non-zero if a notebook fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SIZES = ("test", "default", "full")


def run_notebook(path: Path, size: str, out: Path, timeout: int) -> tuple[float, float, object]:
    """Execute ``path`` in a fresh kernel; return ``(wall s, kernel CPU s, executed notebook)``.

    The CPU seconds are those of the finished kernel process (``RUSAGE_CHILDREN``): on a shared
    machine they tell what the run costs when the notebook has the cores to itself.
    """
    import nbclient
    import nbformat

    os.environ.update(
        SMORE_NOTEBOOK_SIZE=size,
        SMORE_NOTEBOOK_OUT=str(out.resolve()),
        MPLBACKEND="Agg",
        PYDEVD_DISABLE_FILE_VALIDATION="1",
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    )
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix="smore_nb_") as cwd:
        client = nbclient.NotebookClient(
            nb, kernel_name="python3", timeout=timeout, resources={"metadata": {"path": cwd}}
        )
        start, cpu = time.perf_counter(), _children_cpu()
        client.execute()
        return time.perf_counter() - start, _children_cpu() - cpu, nb


def _children_cpu() -> float:
    """User + system CPU seconds of this process's finished children (0 where unsupported)."""
    try:
        import resource
    except ImportError:  # not POSIX
        return 0.0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="substrings of notebook names (default: all)")
    parser.add_argument(
        "--size",
        choices=SIZES,
        default=os.environ.get("SMORE_NOTEBOOK_SIZE") or "default",
        help="default: $SMORE_NOTEBOOK_SIZE, else 'default'",
    )
    parser.add_argument(
        "--out", type=Path, default=Path(tempfile.gettempdir()) / "smore_notebook_out"
    )
    parser.add_argument("--executed", type=Path, default=None, help="save executed copies here")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    parser.add_argument("--json", type=Path, default=None, help="write the wall times here")
    args = parser.parse_args(argv)
    paths = sorted(NOTEBOOKS.glob("*.ipynb"))
    if args.names:
        paths = [p for p in paths if any(n in p.name for n in args.names)]
        if not paths:
            parser.error(f"no notebook in {NOTEBOOKS} matches {args.names}")
    args.out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float | None] = {}
    cpu_times: dict[str, float | None] = {}
    failed = False
    for path in paths:
        print(f"{path.name} (size {args.size}) ...", flush=True)
        try:
            seconds, cpu, nb = run_notebook(path, args.size, args.out, args.timeout)
        except Exception as err:  # report every notebook, then fail
            print(f"{path.name}: FAILED after its cell error:\n{err}", file=sys.stderr, flush=True)
            times[path.name] = cpu_times[path.name] = None
            failed = True
            continue
        times[path.name], cpu_times[path.name] = round(seconds, 1), round(cpu, 1)
        print(
            f"{path.name}: {seconds:.1f} s wall ({seconds / 60:.1f} min), kernel CPU {cpu:.1f} s",
            flush=True,
        )
        if args.executed is not None:
            import nbformat

            args.executed.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, args.executed / path.name)
    print("wall times (s):", json.dumps(times), "| figures in", args.out)
    load = os.getloadavg()[0]
    print("kernel CPU times (s):", json.dumps(cpu_times), f"| load average {load:.1f}")
    if args.json is not None:
        result = {"size": args.size, "wall_s": times, "kernel_cpu_s": cpu_times}
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
