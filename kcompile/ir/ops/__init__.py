"""Importing this package registers every IR op."""

from kcompile.ir.ops import (  # noqa: F401
    conv,
    elementwise,
    fused,
    gather,
    matmul,
    movement,
    norm,
    pool,
    random,
    reduce,
    rnn,
)
