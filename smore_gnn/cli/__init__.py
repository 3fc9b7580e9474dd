"""The ``smore-gnn`` command: ``finetune``, ``eval`` and ``inspect``.

:mod:`~smore_gnn.cli.commands` runs them, :mod:`~smore_gnn.cli.args` holds their validated
settings, :mod:`~smore_gnn.cli.parse` reads flags and YAML, :mod:`~smore_gnn.cli.health`
reports routing health.
"""

from smore_gnn.cli.commands import main

__all__ = ["main"]
