"""Dispatch of `fused` nodes to the kernel family of their anchor (the program's first step)."""

from __future__ import annotations

from llvmlite import ir

from kcompile.codegen.llvm.kernels.common import KernelContext
from kcompile.codegen.llvm.kernels.elementwise import ELEMENTWISE, lower_fused_elementwise
from kcompile.ir.core import Node


def lower_fused(ctx: KernelContext, node: Node) -> ir.Function:
    program = node.attrs["program"]
    anchor = program[0][0]
    for op, _, _ in program[1:]:
        if op not in ELEMENTWISE:
            raise NotImplementedError(f"fused step {op!r} has no vector rule")
    if anchor == "matmul":
        from kcompile.codegen.llvm.kernels.gemm import emit_gemm
        return emit_gemm(ctx, node, program)
    if anchor == "conv2d":
        from kcompile.codegen.llvm.kernels.conv import emit_conv
        return emit_conv(ctx, node, program)
    if anchor in ELEMENTWISE:
        return lower_fused_elementwise(ctx, node)
    raise NotImplementedError(f"no fused kernel for anchor {anchor!r}")
