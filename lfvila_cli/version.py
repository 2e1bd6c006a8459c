"""The package version (a module of its own, so that any layer can name it: docs/architecture.md §1)."""

__version__ = "0.1.0"
