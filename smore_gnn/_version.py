"""The package version, in one place (read by pyproject.toml and by saved adapter folders)."""

__version__ = "0.3.0.dev0"
