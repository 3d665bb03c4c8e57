"""LLVM code generation: passes -> kernels -> one JIT-compiled module per model."""
