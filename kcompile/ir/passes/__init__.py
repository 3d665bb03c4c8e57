"""Graph -> graph passes, each verified after it runs; `optimize` is the compiler's pipeline."""

from __future__ import annotations

from collections.abc import Callable

from kcompile.ir.core import Graph
from kcompile.ir.passes.cse import cse
from kcompile.ir.passes.dce import dce
from kcompile.ir.passes.fold import fold_batchnorm, fold_constants, remove_identities
from kcompile.ir.passes.fuse import fuse
from kcompile.ir.passes.static import StaticSplit, split_static

__all__ = ["StaticSplit", "cse", "dce", "fold_batchnorm", "fold_constants", "fuse", "optimize",
           "remove_identities", "split_static"]


def optimize(graph: Graph, dump: Callable[[str, Graph], None] | None = None) -> StaticSplit:
    """dce, constant folding, identity removal, CSE, BatchNorm folding, static split, fusion."""
    step = 0

    def after(name: str, g: Graph) -> Graph:
        nonlocal step
        g.verify()
        step += 1
        if dump is not None:
            dump(f"{step:02d}-{name}", g)
        return g

    g = after("input", graph)
    for name, pass_ in (("dce", dce), ("fold_constants", fold_constants),
                        ("remove_identities", remove_identities), ("cse", cse),
                        ("fold_batchnorm", fold_batchnorm),
                        ("dce", dce)):
        g = after(name, pass_(g))
    split = split_static(g)
    after("prepare", split.prepare)
    main = after("split_static", split.main)
    main = after("fuse", fuse(main))
    return StaticSplit(split.prepare, main)
