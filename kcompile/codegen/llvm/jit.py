"""LLVM target selection, optimisation, object emission, the on-disk object cache and loading.

A compiled model is one LLVM module. It is optimised at O3 for the host CPU and emitted as an object
file; the object is cached on disk under a key made of everything that could change the machine code
(the caller's content key, CPU name and features, llvmlite/LLVM and kcompile versions, the codegen
sources), so a second start loads it without running LLVM at all.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import llvmlite
import llvmlite.binding as llvm

_ISAS = ("avx512", "avx2", "generic")
# environment switches that change generated code, so they are part of the cache key
CODEGEN_ENV = ("KCOMPILE_WINOGRAD", "KCOMPILE_UNROLL", "KCOMPILE_AUTOVEC")


@dataclass(frozen=True)
class Target:
    """What the kernels are generated for: the vector width follows the widest usable ISA."""

    triple: str
    cpu: str
    features: str
    isa: str  # avx512 | avx2 | generic

    @property
    def vector_width(self) -> int:
        """fp32 lanes per vector register (4 is legal everywhere: SSE2 on x86-64, NEON on arm64)."""
        return {"avx512": 16, "avx2": 8}.get(self.isa, 4)

    @property
    def num_vector_registers(self) -> int:
        return 32 if self.isa == "avx512" or self.triple.startswith("aarch64") else 16

    def function_attributes(self) -> tuple[tuple[str, str], ...]:
        attrs = [("target-cpu", self.cpu), ("target-features", self.features)]
        if self.isa == "avx512":
            attrs += [("prefer-vector-width", "512"), ("min-legal-vector-width", "512")]
        return tuple(attrs)


@functools.cache
def _init_llvm() -> None:
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()


def host_target(isa: str | None = None) -> Target:
    """The host target; `isa` (or env `KCOMPILE_ISA`) narrows it to avx2 or generic for testing."""
    _init_llvm()
    isa = isa or os.environ.get("KCOMPILE_ISA") or None
    if isa is not None and isa not in _ISAS:
        raise ValueError(f"KCOMPILE_ISA / isa must be one of {_ISAS}, got {isa!r}")
    triple = llvm.get_process_triple()
    cpu = llvm.get_host_cpu_name()
    feats = llvm.get_host_cpu_features()
    best = ("avx512" if feats.get("avx512f") and feats.get("avx512bw") and feats.get("avx512vl")
            else "avx2" if feats.get("avx2") and feats.get("fma") else "generic")
    if isa is None or _ISAS.index(isa) < _ISAS.index(best):
        isa = best
    if isa != best:
        # Narrowing: turn the wider extensions off so LLVM cannot use them behind our back.
        for name in list(feats):
            if (isa == "avx2" and name.startswith("avx512")) or \
               (isa == "generic" and (name.startswith("avx") or name in ("fma", "f16c", "fma4"))):
                feats[name] = False
    if not triple.startswith(("x86_64", "i686", "i386")):
        isa = "generic"
    return Target(triple, cpu, feats.flatten(), isa)


@functools.cache
def _target_machine(target: Target) -> llvm.TargetMachine:
    """The shared machine for optimising and emitting (never handed to an engine)."""
    return _new_target_machine(target)


def _new_target_machine(target: Target) -> llvm.TargetMachine:
    _init_llvm()
    return llvm.Target.from_triple(target.triple).create_target_machine(
        cpu=target.cpu, features=target.features, opt=3, reloc="default", codemodel="jitdefault")


@functools.cache
def _codegen_digest() -> str:
    """Hash of the code generator's sources: editing a kernel invalidates cached objects."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def cache_dir() -> Path | None:
    """`KCOMPILE_CACHE_DIR` (empty or `off` disables caching), else ~/.cache/kcompile."""
    env = os.environ.get("KCOMPILE_CACHE_DIR")
    if env is not None and env.strip().lower() in ("", "off", "0", "none"):
        return None
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / \
        "kcompile"
    return base


@contextlib.contextmanager
def temporary_cache_dir():
    """A fresh, empty object cache for the duration (cold compile measurements)."""
    tmp = tempfile.mkdtemp(prefix="kcompile-cache-")
    old = os.environ.get("KCOMPILE_CACHE_DIR")
    os.environ["KCOMPILE_CACHE_DIR"] = tmp
    try:
        yield Path(tmp)
    finally:
        if old is None:
            os.environ.pop("KCOMPILE_CACHE_DIR", None)
        else:
            os.environ["KCOMPILE_CACHE_DIR"] = old
        shutil.rmtree(tmp, ignore_errors=True)


def cache_key(content_key: str, target: Target) -> str:
    from kcompile import __version__

    h = hashlib.sha256()
    options = ",".join(f"{k}={os.environ.get(k, '')}" for k in CODEGEN_ENV)
    for part in (content_key, options, target.triple, target.cpu, target.features, target.isa,
                 llvmlite.__version__, ".".join(map(str, llvm.llvm_version_info)), __version__,
                 _codegen_digest()):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


@dataclass
class CompileStats:
    seconds: float = 0.0
    cached: bool = False
    ir_seconds: float = 0.0  # building the LLVM IR in Python
    llvm_seconds: float = 0.0  # parse + optimise + emit


class Library:
    """A loaded object: symbol addresses stay valid while this object (and its engine) lives."""

    def __init__(self, obj: bytes, target: Target) -> None:
        # the engine takes ownership of its target machine, so it gets its own
        self._engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), _new_target_machine(target))
        self._engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
        self._engine.finalize_object()
        self.object = obj

    def address(self, name: str) -> int:
        addr = self._engine.get_function_address(name)
        if not addr:
            raise RuntimeError(f"compiled module has no symbol {name!r}")
        return addr

    def global_address(self, name: str) -> int:
        """Address of a global variable of the module (e.g. the index-error word)."""
        addr = self._engine.get_global_value_address(name)
        if not addr:
            raise RuntimeError(f"compiled module has no global {name!r}")
        return addr


def optimize_and_emit(ir_text: str, target: Target, dump: DumpSink | None = None) -> bytes:
    """Parse, verify, optimise (O3) and emit an object file."""
    _init_llvm()
    tm = _target_machine(target)
    mod = llvm.parse_assembly(ir_text)
    mod.triple = target.triple
    mod.data_layout = str(tm.target_data)
    mod.verify()
    pto = llvm.create_pipeline_tuning_options(speed_level=3)
    # Kernels are vectorised by hand; the auto-vectorisers only cost compile time.
    pto.loop_vectorization = os.environ.get("KCOMPILE_AUTOVEC") == "1"
    pto.slp_vectorization = os.environ.get("KCOMPILE_AUTOVEC") == "1"
    # The micro-kernels are unrolled where it matters (register tiles, split accumulators); LLVM's
    # own unrolling doubled compile time for no measurable speed.
    pto.loop_unrolling = os.environ.get("KCOMPILE_UNROLL") == "1"
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(mod, pb)
    if dump is not None:
        dump.write("module.opt.ll", str(mod))
        dump.write("module.s", tm.emit_assembly(mod))
    return tm.emit_object(mod)


def emit_assembly(ir_text: str, target: Target) -> str:
    """Optimised assembly of a module (used by tests that count FMAs and by the dump flag)."""
    _init_llvm()
    tm = _target_machine(target)
    mod = llvm.parse_assembly(ir_text)
    mod.triple = target.triple
    mod.data_layout = str(tm.target_data)
    pto = llvm.create_pipeline_tuning_options(speed_level=3)
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(mod, pb)
    return tm.emit_assembly(mod)


def compile_cached(content_key: str, build_ir, target: Target, dump: DumpSink | None = None
                   ) -> tuple[Library, dict, CompileStats]:
    """Load the object (and its JSON metadata) for `content_key` from the cache, or build it with
    `build_ir()` -> (IR text, metadata)."""
    stats = CompileStats()
    t0 = time.perf_counter()
    directory = cache_dir()
    path = directory / f"{cache_key(content_key, target)}.o" if directory else None
    if path is not None and path.is_file() and dump is None:
        try:
            meta = json.loads(path.with_suffix(".json").read_text())
            obj = path.read_bytes()
            # LLVM's object loader trusts its input (a damaged file can crash the process), so
            # only an object whose hash matches the one recorded at write time is loaded.
            if meta.get("_object_sha256") != hashlib.sha256(obj).hexdigest():
                raise ValueError("cached object does not match its checksum")
            lib = Library(obj, target)
            stats.cached = True
            stats.seconds = time.perf_counter() - t0
            return lib, meta, stats
        except Exception:  # a damaged cache entry is rebuilt, never trusted
            path.unlink(missing_ok=True)
    ir_text, meta = build_ir()
    if dump is not None:
        dump.write("module.ll", ir_text)
    t1 = time.perf_counter()
    obj = optimize_and_emit(ir_text, target, dump)
    stats.ir_seconds, stats.llvm_seconds = t1 - t0, time.perf_counter() - t1
    if path is not None:
        meta = {**meta, "_object_sha256": hashlib.sha256(obj).hexdigest()}
        _atomic_write(path.with_suffix(".json"), json.dumps(meta).encode())
        _atomic_write(path, obj)
    lib = Library(obj, target)
    stats.seconds = time.perf_counter() - t0
    return lib, meta, stats


def _atomic_write(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache only costs compile time


class DumpSink:
    """Writes debugging artefacts (IR after each pass, LLVM IR, assembly) into one directory."""

    def __init__(self, directory: str | os.PathLike, name: str) -> None:
        self.directory = Path(directory) / name
        self.directory.mkdir(parents=True, exist_ok=True)
        self.count = 0

    def write(self, filename: str, text: str) -> Path:
        path = self.directory / filename
        path.write_text(text)
        return path


def dump_sink(name: str, option: str | os.PathLike | None = None) -> DumpSink | None:
    """A sink when `option` or env `KCOMPILE_DUMP` names a directory."""
    directory = option or os.environ.get("KCOMPILE_DUMP")
    return DumpSink(directory, name) if directory else None
