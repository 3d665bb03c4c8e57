"""Small data sets for demos and tests."""

from kcompile.datasets import digits

__all__ = ["digits"]
