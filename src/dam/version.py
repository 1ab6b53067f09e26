"""The package's version, the one source (pyproject.toml reads it; ``dam.__version__`` re-exports it).  A module
of its own so that the lowest layer (``dam.environment``, which records it in every run) can import it without
importing the package root, which imports every layer."""

__version__ = "0.14.0"
