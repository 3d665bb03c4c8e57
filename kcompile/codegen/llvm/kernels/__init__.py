"""Kernel families; `load_all` imports them so every lowering is registered."""

from __future__ import annotations

import importlib

_FAMILIES = ("elementwise", "gemm", "fused", "reduce", "pool", "conv", "winograd", "movement", "random",
             "backward", "conv_grad", "gather", "rnn", "rnn_bptt")


def load_all() -> None:
    for name in _FAMILIES:
        importlib.import_module(f"kcompile.codegen.llvm.kernels.{name}")
