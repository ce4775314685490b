"""A full training step (forward, loss, backward, SGD step) of each network at batch 64.

One benchmark group per network holding fastconv, PyTorch, and fastconv's layers running on
the NumPy reference ops at batch 2 (``reference[N=2]``; the loops are too slow for 64).
"""

import pytest

from benchmarks._nets import (
    BATCH,
    NETS,
    fastconv_trainer,
    reference_layers,
    synthetic_batch,
    trainer,
)

REFERENCE_BATCH = 2
NET_PARAMS = [
    pytest.param(name, marks=pytest.mark.benchmark(group=f"train_step {name}", min_rounds=10))
    for name in NETS
]


@pytest.mark.parametrize("impl", ["fastconv", "torch", f"reference[N={REFERENCE_BATCH}]"])
@pytest.mark.parametrize("name", NET_PARAMS)
def test_train_step(measure, name, impl):
    if impl == "torch":
        pytest.importorskip("torch")
    if impl.startswith("reference"):
        x, y = synthetic_batch(REFERENCE_BATCH)
        _, step = fastconv_trainer(name)
        with reference_layers():
            measure(impl, lambda: step(x, y))
    else:
        x, y = synthetic_batch(BATCH)
        _, step = trainer(impl, name)
        measure(impl, lambda: step(x, y))
