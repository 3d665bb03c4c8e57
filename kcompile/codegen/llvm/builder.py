"""A thin layer over llvmlite's IRBuilder for writing kernels: loops, vectors, masks, intrinsics.

Kernels are written with explicit vectors of `Target.vector_width` fp32 lanes and `llvm.fma`, not left
to the auto-vectoriser, so the code we get does not depend on LLVM's heuristics. Loop-carried values
live in entry-block allocas (`var`), which SROA promotes to registers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from llvmlite import ir

from kcompile.codegen.llvm.jit import Target

F32 = ir.FloatType()
F64 = ir.DoubleType()
I1 = ir.IntType(1)
I8 = ir.IntType(8)
I32 = ir.IntType(32)
I64 = ir.IntType(64)
PTR = ir.PointerType()
VOID = ir.VoidType()

_LLVM_DTYPES = {"float32": F32, "float64": F64, "int32": I32, "int64": I64, "uint32": I32, "bool": I8}


def llvm_type(dtype: str) -> ir.Type:
    return _LLVM_DTYPES[dtype]


def new_module(name: str, target: Target) -> ir.Module:
    module = ir.Module(name=name)
    module.triple = target.triple
    return module


def module_text(module: ir.Module, target: Target) -> str:
    """The module's IR with the target's string attributes on every definition.

    llvmlite only knows enum attributes, so the string ones ("target-cpu", "min-legal-vector-width",
    without which x86 splits 512-bit vectors in two) go into one attribute group added here.
    """
    lines = []
    for line in str(module).splitlines():
        if line.startswith("define "):
            line += " #0"
        lines.append(line)
    group = " ".join(f'"{k}"="{v}"' for k, v in target.function_attributes())
    lines.append(f"attributes #0 = {{ {group} }}")
    return "\n".join(lines) + "\n"


def define(module: ir.Module, name: str, args: Sequence[ir.Type], target: Target,
           ret: ir.Type = VOID, internal: bool = True, noalias_ptrs: bool = False) -> ir.Function:
    """A function with the target's attributes; internal ones are free to be inlined."""
    fn = ir.Function(module, ir.FunctionType(ret, list(args)), name=name)
    if internal:
        fn.linkage = "internal"
    fn.attributes.add("nounwind")
    if noalias_ptrs:
        for arg in fn.args:
            if isinstance(arg.type, ir.PointerType):
                arg.add_attribute("noalias")
    return fn


class KernelBuilder:
    """Builds one function body."""

    def __init__(self, fn: ir.Function, target: Target) -> None:
        self.fn = fn
        self.module: ir.Module = fn.module
        self.target = target
        self.vw = target.vector_width
        self._entry = fn.append_basic_block("entry")
        self._body = fn.append_basic_block("body")
        self.b = ir.IRBuilder(self._body)
        self._alloca_builder = ir.IRBuilder(self._entry)

    def finish(self) -> None:
        """Close the entry block (allocas) into the body and return void if still open."""
        self._alloca_builder.branch(self._body)
        if not self.b.block.is_terminated:
            self.b.ret_void()

    # -- constants and types -------------------------------------------------------------------
    def vec_type(self, n: int | None = None, elem: ir.Type = F32) -> ir.VectorType:
        return ir.VectorType(elem, n or self.vw)

    @staticmethod
    def i64(value: int) -> ir.Constant:
        return ir.Constant(I64, int(value))

    @staticmethod
    def i32(value: int) -> ir.Constant:
        return ir.Constant(I32, int(value) & 0xFFFFFFFF)

    @staticmethod
    def f32(value: float) -> ir.Constant:
        return ir.Constant(F32, float(value))

    def vconst(self, value: float, n: int | None = None, elem: ir.Type = F32) -> ir.Constant:
        n = n or self.vw
        if isinstance(elem, ir.IntType):
            value = int(value) & ((1 << elem.width) - 1)
        return ir.Constant(ir.VectorType(elem, n), [ir.Constant(elem, value)] * n)

    def splat(self, scalar: ir.Value, n: int | None = None) -> ir.Value:
        n = n or self.vw
        vt = ir.VectorType(scalar.type, n)
        v = self.b.insert_element(ir.Constant(vt, ir.Undefined), scalar, self.i32(0))
        return self.b.shuffle_vector(v, ir.Constant(vt, ir.Undefined),
                                     ir.Constant(ir.VectorType(I32, n), [0] * n))

    # -- variables (promoted to registers by SROA) ---------------------------------------------
    def var(self, typ: ir.Type, init: ir.Value | None = None, name: str = "") -> ir.AllocaInstr:
        slot = self._alloca_builder.alloca(typ, name=name)
        if init is not None:
            self.b.store(init, slot)
        return slot

    def buffer(self, elem: ir.Type, count: int) -> ir.AllocaInstr:
        """A 64-byte aligned stack array, typed as an opaque `ptr` like every other pointer here."""
        slot = self._alloca_builder.alloca(ir.ArrayType(elem, count))
        slot.align = 64
        slot.type = PTR  # llvmlite types allocas; the printed IR only uses allocated_type
        return slot

    def get(self, slot: ir.AllocaInstr) -> ir.Value:
        return self.b.load(slot, typ=slot.allocated_type)

    def set(self, slot: ir.AllocaInstr, value: ir.Value) -> None:
        self.b.store(value, slot)

    # -- memory --------------------------------------------------------------------------------
    def gep(self, ptr: ir.Value, index: ir.Value | int, elem: ir.Type = F32) -> ir.Value:
        if isinstance(index, int):
            if index == 0:
                return ptr
            index = self.i64(index)
        return self.b.gep(ptr, [index], inbounds=True, source_etype=elem)

    def load(self, ptr: ir.Value, index: ir.Value | int = 0, elem: ir.Type = F32) -> ir.Value:
        return self.b.load(self.gep(ptr, index, elem), typ=elem)

    def store(self, value: ir.Value, ptr: ir.Value, index: ir.Value | int = 0) -> None:
        self.b.store(value, self.gep(ptr, index, value.type))

    def vload(self, ptr: ir.Value, index: ir.Value | int = 0, n: int | None = None,
              elem: ir.Type = F32) -> ir.Value:
        vt = ir.VectorType(elem, n or self.vw)
        return self.b.load(self.gep(ptr, index, elem), typ=vt, align=4)

    def vstore(self, value: ir.Value, ptr: ir.Value, index: ir.Value | int = 0) -> None:
        self.b.store(value, self.gep(ptr, index, value.type.element), align=4)

    def lane_mask(self, count: ir.Value, n: int | None = None) -> ir.Value:
        """<n x i1>: lane j is on when j < count (count is an i64 in [0, n])."""
        n = n or self.vw
        lanes = ir.Constant(ir.VectorType(I64, n), list(range(n)))
        return self.b.icmp_signed("<", lanes, self.splat(count, n))

    def masked_load(self, ptr: ir.Value, index: ir.Value | int, mask: ir.Value,
                    elem: ir.Type = F32, passthru: ir.Value | None = None) -> ir.Value:
        n = mask.type.count
        vt = ir.VectorType(elem, n)
        fn = self.intrinsic(f"llvm.masked.load.v{n}{_suffix(elem)}.p0", vt,
                            [PTR, I32, ir.VectorType(I1, n), vt])
        passthru = passthru if passthru is not None else ir.Constant(vt, [ir.Constant(elem, 0)] * n)
        return self.b.call(fn, [self.gep(ptr, index, elem), self.i32(4), mask, passthru])

    def masked_store(self, value: ir.Value, ptr: ir.Value, index: ir.Value | int,
                     mask: ir.Value) -> None:
        vt = value.type
        n = vt.count
        fn = self.intrinsic(f"llvm.masked.store.v{n}{_suffix(vt.element)}.p0", VOID,
                            [vt, PTR, I32, ir.VectorType(I1, n)])
        self.b.call(fn, [value, self.gep(ptr, index, vt.element), self.i32(4), mask])

    def store_vector(self, value: ir.Value, ptr: ir.Value, index: ir.Value | int,
                     mask: ir.Value | None) -> None:
        """A plain vector store, or a masked one at an edge."""
        if mask is None:
            self.vstore(value, ptr, index)
        else:
            self.masked_store(value, ptr, index, mask)

    def load_vector(self, ptr: ir.Value, index: ir.Value | int, mask: ir.Value | None) -> ir.Value:
        return self.vload(ptr, index) if mask is None else self.masked_load(ptr, index, mask)

    def memcpy(self, dst: ir.Value, dst_offset: ir.Value | int, src: ir.Value,
               src_offset: ir.Value | int, nbytes: ir.Value | int) -> None:
        """Copy bytes (llvm.memcpy: LLVM emits the best block copy for the target)."""
        fn = self.intrinsic("llvm.memcpy.p0.p0.i64", VOID, [PTR, PTR, I64, I1])
        nbytes = self.i64(nbytes) if isinstance(nbytes, int) else nbytes
        self.b.call(fn, [self.gep(dst, dst_offset, I8), self.gep(src, src_offset, I8), nbytes,
                         ir.Constant(I1, 0)])

    def prefetch(self, ptr: ir.Value, index: ir.Value | int = 0, locality: int = 3) -> None:
        fn = self.intrinsic("llvm.prefetch.p0", VOID, [PTR, I32, I32, I32])
        self.b.call(fn, [self.gep(ptr, index), self.i32(0), self.i32(locality), self.i32(1)])

    # -- arithmetic ----------------------------------------------------------------------------
    def intrinsic(self, name: str, ret: ir.Type, args: Sequence[ir.Type]) -> ir.Function:
        existing = self.module.globals.get(name)
        if existing is not None:
            return existing
        return ir.Function(self.module, ir.FunctionType(ret, list(args)), name=name)

    def _unary_intrinsic(self, base: str, x: ir.Value) -> ir.Value:
        fn = self.intrinsic(f"llvm.{base}.{_type_suffix(x.type)}", x.type, [x.type])
        return self.b.call(fn, [x])

    def _binary_intrinsic(self, base: str, x: ir.Value, y: ir.Value) -> ir.Value:
        fn = self.intrinsic(f"llvm.{base}.{_type_suffix(x.type)}", x.type, [x.type, x.type])
        return self.b.call(fn, [x, y])

    def fma(self, a: ir.Value, b: ir.Value, c: ir.Value) -> ir.Value:
        """a * b + c with one rounding (vfmadd)."""
        fn = self.intrinsic(f"llvm.fma.{_type_suffix(a.type)}", a.type, [a.type] * 3)
        return self.b.call(fn, [a, b, c])

    def sqrt(self, x: ir.Value) -> ir.Value:
        return self._unary_intrinsic("sqrt", x)

    def fabs(self, x: ir.Value) -> ir.Value:
        return self._unary_intrinsic("fabs", x)

    def floor(self, x: ir.Value) -> ir.Value:
        return self._unary_intrinsic("floor", x)

    def rint(self, x: ir.Value) -> ir.Value:
        return self._unary_intrinsic("rint", x)

    def fmax(self, x: ir.Value, y: ir.Value) -> ir.Value:
        """NumPy `maximum`: NaN in either operand gives NaN."""
        return self._binary_intrinsic("maximum", x, y)

    def fmin(self, x: ir.Value, y: ir.Value) -> ir.Value:
        return self._binary_intrinsic("minimum", x, y)

    def max_fast(self, x: ir.Value, y: ir.Value) -> ir.Value:
        """x > y ? x : y -- one vmaxps; used where both operands are finite reductions."""
        return self.b.select(self.b.fcmp_ordered(">", x, y), x, y)

    def min_fast(self, x: ir.Value, y: ir.Value) -> ir.Value:
        return self.b.select(self.b.fcmp_ordered("<", x, y), x, y)

    def reduce_add(self, v: ir.Value) -> ir.Value:
        elem = v.type.element
        fn = self.intrinsic(f"llvm.vector.reduce.fadd.{_type_suffix(v.type)}", elem, [elem, v.type])
        return self.b.call(fn, [ir.Constant(elem, -0.0), v], fastmath=("reassoc",))

    def reduce_max(self, v: ir.Value) -> ir.Value:
        elem = v.type.element
        fn = self.intrinsic(f"llvm.vector.reduce.fmaximum.{_type_suffix(v.type)}", elem, [v.type])
        return self.b.call(fn, [v])

    # -- control flow --------------------------------------------------------------------------
    @contextmanager
    def loop(self, start: ir.Value | int, stop: ir.Value | int, step: int = 1,
             name: str = "i") -> Iterator[ir.Value]:
        """for (i = start; i < stop; i += step): yields i (i64)."""
        b = self.b
        start = self.i64(start) if isinstance(start, int) else start
        stop = self.i64(stop) if isinstance(stop, int) else stop
        pre = b.block
        head = self.fn.append_basic_block(f"{name}.head")
        body = self.fn.append_basic_block(f"{name}.body")
        done = self.fn.append_basic_block(f"{name}.done")
        b.branch(head)
        b.position_at_end(head)
        i = b.phi(I64, name=name)
        i.add_incoming(start, pre)
        b.cbranch(b.icmp_signed("<", i, stop), body, done)
        b.position_at_end(body)
        yield i
        nxt = b.add(i, self.i64(step), name=f"{name}.next", flags=("nsw",))
        i.add_incoming(nxt, b.block)
        b.branch(head)
        b.position_at_end(done)

    @contextmanager
    def if_then(self, cond: ir.Value) -> Iterator[None]:
        with self.b.if_then(cond):
            yield

    def min_i64(self, x: ir.Value, y: ir.Value) -> ir.Value:
        return self.b.select(self.b.icmp_signed("<", x, y), x, y)

    def max_i64(self, x: ir.Value, y: ir.Value) -> ir.Value:
        return self.b.select(self.b.icmp_signed(">", x, y), x, y)


def _suffix(elem: ir.Type) -> str:
    if elem == F32:
        return "f32"
    if elem == F64:
        return "f64"
    return f"i{elem.width}"


def _type_suffix(t: ir.Type) -> str:
    if isinstance(t, ir.VectorType):
        return f"v{t.count}{_suffix(t.element)}"
    return _suffix(t)
