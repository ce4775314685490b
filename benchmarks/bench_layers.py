"""conv2d and max_pool2d, forward and forward + full backward, on the benchmark shapes.

The shapes are listed in ``benchmarks/README.md`` (``_layers.SHAPES``).

One benchmark group per op, pass and shape (e.g. ``conv2d fwd+bwd res_56``) holding fastconv,
PyTorch and the NumPy reference, the latter on a smaller batch where its id says so
(``res_56-fwd+bwd-reference[N=1]``).
"""

import pytest

from benchmarks._layers import IMPLS, PASSES, SHAPES, impl_label, make_op

CASES = [
    pytest.param(
        shape,
        pass_,
        impl,
        marks=pytest.mark.benchmark(group=f"{shape.op} {pass_} {shape.id}", min_rounds=10),
        id=f"{shape.id}-{pass_}-{impl_label(shape, impl)}",
    )  # fmt: skip
    for shape in SHAPES
    for pass_ in PASSES
    for impl in IMPLS
]


@pytest.mark.parametrize(("shape", "pass_", "impl"), CASES)
def test_layer(measure, shape, pass_, impl):
    if impl == "torch":
        pytest.importorskip("torch")
    measure(impl, make_op(shape, pass_, impl))
