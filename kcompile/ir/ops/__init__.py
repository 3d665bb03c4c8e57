"""Importing this package registers every IR op."""

from kcompile.ir.ops import (  # noqa: F401
    conv,
    elementwise,
    matmul,
    movement,
    norm,
    pool,
    random,
    reduce,
)
