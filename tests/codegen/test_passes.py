"""Graph passes: each keeps the graph's meaning (checked with the eager executor) and does its job."""

from __future__ import annotations

import numpy as np

import kcompile as keras
from kcompile import layers
from kcompile.ir.core import Graph, TensorType
from kcompile.ir.interpret import run
from kcompile.ir.passes import (
    cse,
    dce,
    fold_batchnorm,
    fold_constants,
    fuse,
    optimize,
    remove_identities,
)
from kcompile.ir.passes.memory import nbytes_per_sample, plan_memory


def _graph(model, x):
    sigs, st = model.input_signature(x)
    lw = model._lowered_for(sigs, st, False)
    return lw.graph, [v.value for v in lw.variables]


def _model():
    keras.utils.set_random_seed(0)
    m = keras.Sequential([
        layers.Input((10, 10, 3)),
        layers.Conv2D(8, 3, padding="same"), layers.BatchNormalization(),  # folds into the conv
        layers.Activation("relu"),
        layers.Conv2D(6, 3, activation="relu"), layers.BatchNormalization(),  # after relu: epilogue
        layers.MaxPooling2D(), layers.Flatten(), layers.Dense(5, activation="softmax"),
    ])
    rng = np.random.default_rng(0)
    for layer in m.layers:
        if isinstance(layer, layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c).astype(np.float32) for _ in range(4)])
    return m


def test_optimize_preserves_results_and_folds_batchnorm() -> None:
    m = _model()
    x = np.random.default_rng(1).standard_normal((3, 10, 10, 3), dtype=np.float32)
    graph, params = _graph(m, x)
    want = run(graph, [x], params)[0]
    split = optimize(graph)
    prepared = run(split.prepare, [], params)
    np.testing.assert_allclose(run(split.main, [x], prepared)[0], want, rtol=1e-5, atol=1e-6)
    ops = [n.op for n in split.main.nodes]
    assert "batchnorm" not in ops
    programs = [n.attrs["program"] for n in split.main.nodes if n.op == "fused"]
    anchors = [p[0][0] for p in programs]
    assert anchors.count("conv2d") == 2 and "matmul" in anchors
    # the first BN is folded into its conv's kernel: that conv's epilogue is just bias + relu
    first_conv = programs[anchors.index("conv2d")]
    assert [s[0] for s in first_conv] == ["conv2d", "bias_add", "relu"]
    # the second follows a relu, so its scale/shift stay as an epilogue of the second conv
    second = programs[[i for i, a in enumerate(anchors) if a == "conv2d"][1]]
    assert [s[0] for s in second] == ["conv2d", "bias_add", "relu", "mul", "bias_add"]


def test_each_pass_alone_preserves_results() -> None:
    m = _model()
    x = np.random.default_rng(2).standard_normal((2, 10, 10, 3), dtype=np.float32)
    graph, params = _graph(m, x)
    want = run(graph, [x], params)[0]
    for p in (dce, fold_constants, remove_identities, cse, fold_batchnorm, fuse):
        g = p(graph)
        g.verify()
        np.testing.assert_allclose(run(g, [x], params)[0], want, rtol=1e-5, atol=1e-6, err_msg=p.__name__)


def test_cse_merges_repeated_work_only() -> None:
    g = Graph(name="g")
    x = g.add_input(TensorType((None, 4)), "x")
    c1 = g.add_node("constant", [], {"value": np.float32([1, 2, 3, 4])})[0]
    c2 = g.add_node("constant", [], {"value": np.float32([1, 2, 3, 4])})[0]
    c3 = g.add_node("constant", [], {"value": np.float32([1, 2, 3, 5])})[0]
    a = g.add_node("mul", [x, c1])[0]
    b = g.add_node("mul", [x, c2])[0]  # same as a once the constants merge
    c = g.add_node("mul", [x, c3])[0]  # a different constant: kept
    s1 = g.add_node("sum", [a], {"axes": (1,)})[0]
    s2 = g.add_node("sum", [b], {"axes": (0,)})[0]  # different attrs: kept
    g.outputs = [g.add_node("add", [a, b])[0], c, s1, s2]
    merged = cse(g)
    merged.verify()
    assert [n.op for n in merged.nodes] == ["constant", "constant", "mul", "mul", "sum", "sum",
                                            "add"]
    x0 = np.arange(8, dtype=np.float32).reshape(2, 4)
    for u, v in zip(run(merged, [x0]), run(g, [x0]), strict=True):
        np.testing.assert_array_equal(u, v)


def test_dce_and_constant_folding() -> None:
    g = Graph(name="g")
    x = g.add_input(TensorType((None, 4)), "x")
    c1 = g.add_node("constant", [], {"value": np.float32([1, 2, 3, 4])})[0]
    c2 = g.add_node("constant", [], {"value": np.float32([1, 1, 1, 1])})[0]
    s = g.add_node("add", [c1, c2])[0]
    g.add_node("exp", [x])  # dead
    g.outputs = g.add_node("mul", [x, s])
    folded = dce(fold_constants(g))
    assert [n.op for n in folded.nodes] == ["constant", "mul"]
    np.testing.assert_array_equal(folded.nodes[0].attrs["value"], [2, 3, 4, 5])


def test_fusion_never_duplicates_work() -> None:
    g = Graph(name="g")
    x = g.add_input(TensorType((None, 8)), "x")
    a = g.add_node("exp", [x])[0]
    b = g.add_node("relu", [a])[0]
    c = g.add_node("tanh", [a])[0]  # `a` has two users: it must stay materialised
    g.outputs = g.add_node("add", [b, c])
    fused = fuse(g)
    fused.verify()
    assert sum(n.op == "exp" or (n.op == "fused" and n.attrs["program"][0][0] == "exp")
               for n in fused.nodes) == 1
    xs = np.random.default_rng(3).standard_normal((5, 8), dtype=np.float32)
    np.testing.assert_allclose(run(fused, [xs])[0], run(g, [xs])[0], rtol=1e-6)


def test_memory_plan_never_overlaps_live_buffers() -> None:
    m = keras.Sequential([layers.Input((12, 12, 2)), layers.Conv2D(4, 3, activation="relu"),
                          layers.Conv2D(4, 3), layers.Activation("tanh"), layers.MaxPooling2D(),
                          layers.Flatten(), layers.Dense(7), layers.Dense(3)])
    graph, _ = _graph(m, np.zeros((1, 12, 12, 2), np.float32))
    main = optimize(graph).main
    plan = plan_memory(main)
    live: dict = {}
    last = {}
    root = {}
    for node in main.nodes:
        if node.op == "reshape":  # views share their source's buffer and extend its life
            root[node.outputs[0]] = root.get(node.inputs[0], node.inputs[0])
    for i, node in enumerate(main.nodes):
        for v in node.inputs:
            last[root.get(v, v)] = i
    for i, node in enumerate(main.nodes):
        for v in node.outputs:
            slot = plan.slots[v]
            if slot.kind != "arena" or v in root:
                continue
            size, _ = nbytes_per_sample(v)
            lo, hi = slot.per_sample_offset, slot.per_sample_offset + size
            for w, (wlo, whi, wend) in live.items():
                if wend >= i and w is not v:
                    assert hi <= wlo or lo >= whi, f"{v} overlaps {w} while both are live"
            live[v] = (lo, hi, last.get(v, i))
    assert plan.per_sample_bytes < sum(nbytes_per_sample(v)[0] for n in main.nodes for v in n.outputs)


def test_reshape_is_a_view_unless_it_is_an_output() -> None:
    g = Graph(name="g")
    x = g.add_input(TensorType((None, 2, 3)), "x")
    r = g.add_node("reshape", [g.add_node("exp", [x])[0]], {"shape": (None, 6)})[0]
    y = g.add_node("relu", [r])[0]
    g.outputs = [y, x]
    plan = plan_memory(g)
    assert plan.slots[r] is plan.slots[g.nodes[0].outputs[0]]
    assert plan.copies == [(x, 1)]
