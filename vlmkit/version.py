"""vlmkit's version, recorded in every checkpoint and report it writes (below every other module)."""

__version__ = "0.1.0"
