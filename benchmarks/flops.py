"""Floating-point operations of a TensorFlow graph, counted per convolution and matrix product.

TensorFlow's own profiler (``tf.compat.v1.profiler``) counts forward convolutions only: it has
no statistics for their gradients, which are two thirds of a training step. This counts, from
the static shapes in a traced graph (e.g. a training step's concrete function), 2 x the
multiply-adds of every ``Conv2D``, ``Conv2DBackpropInput``, ``Conv2DBackpropFilter``,
depthwise convolution (forward and both gradients) and ``MatMul``: each gradient of a
convolution costs what its forward pass costs. Element-wise work (batch norm, activations,
losses, optimiser updates) is left out; it is a small share of a convolutional network's
operations, though not of its memory traffic. A dilated convolution is counted as TensorFlow
runs it: ``tf.nn.convolution`` turns it, off TPUs, into SpaceToBatch, a plain convolution on a
grid padded to a multiple of the rate, and BatchToSpace, and that padded convolution is what is
counted.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import tensorflow as tf


def _shape(tensor: tf.Tensor, op: tf.Operation) -> list[int]:
    shape = tensor.shape
    if not shape.is_fully_defined():
        raise ValueError(f"{op.type} op {op.name!r} has a tensor of unknown shape {shape}; trace with fixed shapes")
    return shape.as_list()


def _conv_flops(op: tf.Operation, depthwise: bool) -> int:
    """2 x multiply-adds of a convolution or one of its gradients: per element of the forward
    output (the gradient's ``out_backprop``), one product per filter tap and input channel."""
    if op.type.endswith("BackpropInput"):
        filter_shape, forward_output = _shape(op.inputs[1], op), _shape(op.inputs[2], op)
    elif op.type.endswith("BackpropFilter"):
        filter_shape, forward_output = _shape(op.outputs[0], op), _shape(op.inputs[2], op)
    else:
        filter_shape, forward_output = _shape(op.inputs[1], op), _shape(op.outputs[0], op)
    kernel_h, kernel_w, in_channels = filter_shape[:3]
    # A depthwise output channel sees one input channel; a plain one sees all of them.
    per_output = kernel_h * kernel_w * (1 if depthwise else in_channels)
    return 2 * int(np.prod(forward_output, dtype=np.int64)) * per_output


def _matmul_flops(op: tf.Operation) -> int:
    a, b = _shape(op.inputs[0], op), _shape(op.inputs[1], op)
    inner = a[0] if op.get_attr("transpose_a") else a[1]
    columns = b[0] if op.get_attr("transpose_b") else b[1]
    rows = a[1] if op.get_attr("transpose_a") else a[0]
    return 2 * rows * inner * columns


_CONV_TYPES = {
    "Conv2D": False, "Conv2DBackpropInput": False, "Conv2DBackpropFilter": False,
    "DepthwiseConv2dNative": True, "DepthwiseConv2dNativeBackpropInput": True,
    "DepthwiseConv2dNativeBackpropFilter": True,
}  # fmt: skip


def graph_flops(graph: tf.Graph, fetches: list[tf.Tensor] | None = None) -> Counter:
    """{op type: floating-point operations} of the convolutions and matrix products in ``graph``;
    with ``fetches``, only those that run: what ``fetches`` or the function graph's control
    outputs (its variable updates) depend on, as TensorFlow prunes the rest before running it."""
    ops = graph.get_operations() if fetches is None else _live_ops(graph, fetches)
    counts = Counter()
    for op in ops:
        if op.type in _CONV_TYPES:
            counts[op.type] += _conv_flops(op, _CONV_TYPES[op.type])
        elif op.type == "MatMul":
            counts[op.type] += _matmul_flops(op)
    return counts


def _live_ops(graph: tf.Graph, fetches: list[tf.Tensor]) -> list[tf.Operation]:
    """The ops that ``fetches`` and the graph's control outputs depend on (data or control edges).

    A gradient tape differentiates everything recorded between a target and the start of the
    tape, also what leads to no source: ``tape.gradient(loss, d_input)`` builds G's backward
    pass as well when ``loss`` depends on G. That dead work is in the traced graph, not in
    what runs."""
    stack = [t.op for t in fetches] + list(getattr(graph, "control_outputs", []))
    live = set()
    while stack:
        op = stack.pop()
        if op in live:
            continue
        live.add(op)
        stack += [t.op for t in op.inputs] + list(op.control_inputs)
    return [op for op in graph.get_operations() if op in live]


def function_flops(function, *args) -> Counter:
    """:func:`graph_flops` of what runs of ``function`` (a Python callable) traced on ``args``."""
    concrete = tf.function(function).get_concrete_function(*args)
    return graph_flops(concrete.graph, concrete.outputs)
