"""``python -m smore_gnn.cli`` runs the ``smore-gnn`` command."""

from smore_gnn.cli.commands import main

if __name__ == "__main__":
    raise SystemExit(main())
