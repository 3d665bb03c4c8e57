"""Vectorised fp32 transcendental functions, emitted inline (no libm calls in hot loops).

exp: Cody-Waite range reduction x = n ln2 + r, |r| <= ln2/2, degree-7 Taylor polynomial for e^r,
2^n built in the exponent bits. tanh: odd Taylor series to x^15 for |x| < 0.55 (where 1 - 2/(e^2x + 1)
would cancel), the exp form above. log: exponent extraction, mantissa in [sqrt(1/2), sqrt(2)) and the
atanh series in s = f / (2 + f). erf (for exact GELU): Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7).
The max ulp error of each against float64 NumPy is measured in tests/codegen.
All take and return vectors (or scalars) of float; NaN propagates, +-inf give the IEEE limits.
"""

from __future__ import annotations

import math

from llvmlite import ir

from kcompile.codegen.llvm.builder import I32, KernelBuilder

_LN2_HI = 0.693145751953125
_LN2_LO = 1.428606765330187e-06
_EXP_MAX = 88.72283935546875  # above: +inf
_EXP_MIN = -87.33654022216797  # below: 0 (NumPy gives denormals < 1.2e-38; well inside atol)


def _c(kb: KernelBuilder, like: ir.Value, value: float) -> ir.Constant:
    if isinstance(like.type, ir.VectorType):
        return kb.vconst(value, like.type.count)
    return ir.Constant(like.type, value)


def _int_like(like: ir.Value) -> ir.Type:
    return ir.VectorType(I32, like.type.count) if isinstance(like.type, ir.VectorType) else I32


def _ic(like: ir.Value, value: int) -> ir.Constant:
    t = _int_like(like)
    if isinstance(t, ir.VectorType):
        return ir.Constant(t, [ir.Constant(I32, value & 0xFFFFFFFF)] * t.count)
    return ir.Constant(t, value & 0xFFFFFFFF)


def _horner(kb: KernelBuilder, x: ir.Value, coeffs: list[float]) -> ir.Value:
    """coeffs[0] + x*(coeffs[1] + x*(...)), highest degree last."""
    acc = _c(kb, x, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        acc = kb.fma(acc, x, _c(kb, x, c))
    return acc


def _is_nan(kb: KernelBuilder, x: ir.Value) -> ir.Value:
    return kb.b.fcmp_unordered("uno", x, x)


def exp(kb: KernelBuilder, x: ir.Value) -> ir.Value:
    b = kb.b
    xc = kb.min_fast(kb.max_fast(x, _c(kb, x, _EXP_MIN)), _c(kb, x, _EXP_MAX))  # NaN: fixed below
    n = kb.rint(b.fmul(xc, _c(kb, x, 1.4426950408889634)))
    r = kb.fma(n, _c(kb, x, -_LN2_HI), xc)
    r = kb.fma(n, _c(kb, x, -_LN2_LO), r)
    p = _horner(kb, r, [1.0 / math.factorial(k) for k in range(8)])
    ni = b.fptosi(n, _int_like(x))
    # 2^n as float: (n + 127) << 23; n in [-126, 128] here, split in two factors to stay normal.
    half = b.ashr(ni, _ic(x, 1))
    s1 = b.bitcast(b.shl(b.add(half, _ic(x, 127)), _ic(x, 23)), x.type)
    s2 = b.bitcast(b.shl(b.add(b.sub(ni, half), _ic(x, 127)), _ic(x, 23)), x.type)
    y = b.fmul(b.fmul(p, s1), s2)
    y = b.select(b.fcmp_ordered(">", x, _c(kb, x, _EXP_MAX)), _c(kb, x, math.inf), y)
    y = b.select(b.fcmp_ordered("<", x, _c(kb, x, _EXP_MIN)), _c(kb, x, 0.0), y)
    return b.select(_is_nan(kb, x), x, y)


_TANH_TAYLOR = [1.0, -1 / 3, 2 / 15, -17 / 315, 62 / 2835, -1382 / 155925, 21844 / 6081075,
                -929569 / 638512875]


def tanh(kb: KernelBuilder, x: ir.Value) -> ir.Value:
    b = kb.b
    ax = kb.fabs(x)
    x2 = b.fmul(x, x)
    small = b.fmul(x, _horner(kb, x2, _TANH_TAYLOR))
    e = exp(kb, b.fmul(kb.min_fast(ax, _c(kb, x, 20.0)), _c(kb, x, 2.0)))
    big = b.fsub(_c(kb, x, 1.0), b.fdiv(_c(kb, x, 2.0), b.fadd(e, _c(kb, x, 1.0))))
    sign = b.and_(b.bitcast(x, _int_like(x)), _ic(x, 0x80000000))
    big = b.bitcast(b.or_(b.bitcast(big, _int_like(x)), sign), x.type)
    y = b.select(b.fcmp_ordered("<", ax, _c(kb, x, 0.55)), small, big)
    return b.select(_is_nan(kb, x), x, y)


def sigmoid(kb: KernelBuilder, x: ir.Value) -> ir.Value:
    b = kb.b
    e = exp(kb, b.fneg(x))
    return b.fdiv(_c(kb, x, 1.0), b.fadd(_c(kb, x, 1.0), e))


# tanh(x) ~ x P(x^2) / Q(x^2) on |x| <= 9 (beyond, tanh is 1 in fp32): a Lawson-reweighted
# least-squares fit for relative error, 2e-8 in exact arithmetic; evaluated in fp32 the error is
# ~6 ulp of the result near +-1, |error| <= 4e-7 (tests/codegen/test_mathfn_ulp.py).
_TANH_P = [0.9999999795833322, 0.13381086127029918, 0.0034956594600099337, 2.0610236514081345e-05,
           1.3356224797670394e-08]
_TANH_Q = [1.0, 0.46714401762065355, 0.02587725487292097, 0.0003285750621643123,
           7.777205703413857e-07]
_TANH_CLAMP = 9.0


def _clamp(kb: KernelBuilder, x: ir.Value, bound: float) -> ir.Value:
    """x limited to [-bound, bound]; NaN passes through (the select keeps x when a compare is
    false)."""
    return kb.max_fast(_c(kb, x, -bound), kb.min_fast(_c(kb, x, bound), x))


def fast_tanh(kb: KernelBuilder, x: ir.Value) -> ir.Value:
    """tanh as one rational function: ~14 vector ops and a division against `tanh`'s ~45 (a
    polynomial, an exp and a division, for 4 ulp). For the recurrent layers' gates, where the
    activations cost as much as a quarter of a step and an absolute error of 4e-7 is far inside
    what fp32 states carry."""
    b = kb.b
    xc = _clamp(kb, x, _TANH_CLAMP)
    x2 = b.fmul(xc, xc)
    y = b.fdiv(b.fmul(xc, _horner(kb, x2, _TANH_P)), _horner(kb, x2, _TANH_Q))
    return _clamp(kb, y, 1.0)


def fast_sigmoid(kb: KernelBuilder, x: ir.Value) -> ir.Value:
    """sigmoid(x) = (1 + tanh(x / 2)) / 2 with `fast_tanh`: |error| <= 2e-7."""
    half = _c(kb, x, 0.5)
    return kb.fma(fast_tanh(kb, kb.b.fmul(x, half)), half, half)


def log(kb: KernelBuilder, x: ir.Value) -> ir.Value:
    b = kb.b
    it = _int_like(x)
    tiny = b.fcmp_ordered("<", x, _c(kb, x, 1.1754943508222875e-38))
    xs = b.select(tiny, b.fmul(x, _c(kb, x, 8388608.0)), x)  # lift denormals by 2^23
    bits = b.bitcast(xs, it)
    e = b.sub(b.lshr(bits, _ic(x, 23)), _ic(x, 127))
    e = b.select(tiny, b.sub(e, _ic(x, 23)), e)
    m = b.bitcast(b.or_(b.and_(bits, _ic(x, 0x007FFFFF)), _ic(x, 0x3F800000)), x.type)  # [1, 2)
    big = b.fcmp_ordered(">", m, _c(kb, x, math.sqrt(2.0)))
    m = b.select(big, b.fmul(m, _c(kb, x, 0.5)), m)
    e = b.select(big, b.add(e, _ic(x, 1)), e)
    f = b.fsub(m, _c(kb, x, 1.0))
    s = b.fdiv(f, b.fadd(f, _c(kb, x, 2.0)))
    s2 = b.fmul(s, s)
    series = b.fmul(s, _horner(kb, s2, [2.0, 2 / 3, 2 / 5, 2 / 7, 2 / 9, 2 / 11]))
    ef = b.sitofp(e, x.type)
    y = kb.fma(ef, _c(kb, x, _LN2_HI), kb.fma(ef, _c(kb, x, _LN2_LO), series))
    y = b.select(b.fcmp_ordered("==", x, _c(kb, x, 0.0)), _c(kb, x, -math.inf), y)
    y = b.select(b.fcmp_ordered("==", x, _c(kb, x, math.inf)), x, y)
    y = b.select(b.fcmp_ordered("<", x, _c(kb, x, 0.0)), _c(kb, x, math.nan), y)
    return b.select(_is_nan(kb, x), x, y)


def erf(kb: KernelBuilder, x: ir.Value) -> ir.Value:
    b = kb.b
    ax = kb.fabs(x)
    t = b.fdiv(_c(kb, x, 1.0), kb.fma(ax, _c(kb, x, 0.3275911), _c(kb, x, 1.0)))
    poly = b.fmul(t, _horner(kb, t, [0.254829592, -0.284496736, 1.421413741, -1.453152027,
                                     1.061405429]))
    y = b.fsub(_c(kb, x, 1.0), b.fmul(poly, exp(kb, b.fneg(b.fmul(ax, ax)))))
    sign = b.and_(b.bitcast(x, _int_like(x)), _ic(x, 0x80000000))
    return b.bitcast(b.or_(b.bitcast(y, _int_like(x)), sign), x.type)


def gelu(kb: KernelBuilder, x: ir.Value, approximate: bool) -> ir.Value:
    b = kb.b
    half_x = b.fmul(x, _c(kb, x, 0.5))
    if approximate:
        inner = b.fmul(_c(kb, x, math.sqrt(2 / math.pi)),
                       kb.fma(b.fmul(b.fmul(x, x), x), _c(kb, x, 0.044715), x))
        return kb.fma(half_x, tanh(kb, inner), half_x)
    return kb.fma(half_x, erf(kb, b.fmul(x, _c(kb, x, 1 / math.sqrt(2.0)))), half_x)


def pow_(kb: KernelBuilder, a: ir.Value, e_: ir.Value) -> ir.Value:
    """a ** e as exp(e * log(a)) (a >= 0; Adam's beta ** step)."""
    b = kb.b
    y = exp(kb, b.fmul(e_, log(kb, a)))
    one = _c(kb, a, 1.0)
    return b.select(b.fcmp_ordered("==", e_, _c(kb, a, 0.0)), one, y)


def gelu_grad(kb: KernelBuilder, x: ir.Value, approximate: bool) -> ir.Value:
    """d gelu / dx."""
    b = kb.b
    if approximate:
        c = math.sqrt(2 / math.pi)
        x2 = b.fmul(x, x)
        t = tanh(kb, b.fmul(_c(kb, x, c), kb.fma(b.fmul(x2, x), _c(kb, x, 0.044715), x)))
        left = b.fmul(_c(kb, x, 0.5), b.fadd(_c(kb, x, 1.0), t))
        inner = b.fmul(_c(kb, x, c), kb.fma(x2, _c(kb, x, 3 * 0.044715), _c(kb, x, 1.0)))
        right = b.fmul(b.fmul(b.fmul(_c(kb, x, 0.5), x), b.fsub(_c(kb, x, 1.0), b.fmul(t, t))), inner)
        return b.fadd(left, right)
    cdf = kb.fma(erf(kb, b.fmul(x, _c(kb, x, 1 / math.sqrt(2.0)))), _c(kb, x, 0.5), _c(kb, x, 0.5))
    pdf = b.fmul(exp(kb, b.fmul(b.fmul(x, x), _c(kb, x, -0.5))), _c(kb, x, 1 / math.sqrt(2 * math.pi)))
    return kb.fma(x, pdf, cdf)
