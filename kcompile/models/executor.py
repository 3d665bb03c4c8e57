"""Choosing and running an executor for a lowered graph: compiled LLVM code or the eager one.

Compiled code is built once per (input signature, training flag) and re-reads the weights only when
some variable was assigned since the last call (the global variable epoch moved).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np

from kcompile import variables
from kcompile.models.lowering import Lowered, execute

if TYPE_CHECKING:
    from kcompile.codegen.llvm.runtime import CompiledGraph


class CompiledExecutor:
    def __init__(self, lowered: Lowered, compiled: CompiledGraph) -> None:
        self.lowered = lowered
        self.compiled = compiled
        self._epoch = -1

    def sync_weights(self) -> None:
        if self._epoch != variables.EPOCH.value:
            self.compiled.set_params([v.value for v in self.lowered.variables])
            self._epoch = variables.EPOCH.value

    def run(self, inputs: list[np.ndarray], rng_key: np.ndarray | None = None) -> list[np.ndarray]:
        self.sync_weights()
        feeds = list(inputs)
        if self.lowered.needs_rng_key:
            feeds.append(np.zeros(2, np.uint32) if rng_key is None else rng_key)
        outs = self.compiled(feeds)
        k = self.lowered.num_outputs
        for var, value in zip(self.lowered.state_updates, outs[k:], strict=True):
            var.assign(value)
        return outs[:k]

    def fast(self, x: np.ndarray) -> np.ndarray | None:
        """One array in, one array out, nothing to update: the lowest-overhead path."""
        if self._epoch != variables.EPOCH.value:
            self.sync_weights()
        outs = self.compiled.fast_call((x,))
        return None if outs is None else outs[0]

    @property
    def single_io(self) -> bool:
        lw = self.lowered
        return len(lw.graph.inputs) == 1 and lw.num_outputs == 1 and not lw.state_updates


def build_executor(lowered: Lowered, model_name: str, explicit: bool) -> CompiledExecutor | None:
    """Compile `lowered`; when something is not supported yet, raise if the user asked for
    jit_compile=True explicitly, else warn once and return None (the eager executor runs)."""
    from kcompile.codegen.llvm.compiler import compile_graph

    try:
        compiled = compile_graph(lowered.graph)
    except NotImplementedError as err:
        if explicit:
            raise NotImplementedError(f"Model '{model_name}' cannot be compiled: {err}") from None
        warnings.warn(f"Model '{model_name}' runs eagerly: {err}", RuntimeWarning, stacklevel=4)
        return None
    return CompiledExecutor(lowered, compiled)


def run_eager(lowered: Lowered, inputs: list[np.ndarray], rng_key: np.ndarray | None
              ) -> list[np.ndarray]:
    return execute(lowered, inputs, rng_key)
