"""A full training step (forward, loss, backward, SGD step) of each network at batch 64.

One benchmark group per network holding fastconv and PyTorch. (The NumPy reference is timed
per layer, in ``bench_layers.py``: a whole network of its loops would take minutes per step.)
"""

import pytest

from benchmarks._nets import BATCH, NETS, synthetic_batch, trainer

NET_PARAMS = [
    pytest.param(name, marks=pytest.mark.benchmark(group=f"train_step {name}", min_rounds=10))
    for name in NETS
]


@pytest.mark.parametrize("impl", ["fastconv", "torch"])
@pytest.mark.parametrize("name", NET_PARAMS)
def test_train_step(measure, name, impl):
    if impl == "torch":
        pytest.importorskip("torch")
    x, y = synthetic_batch(BATCH)
    _, step = trainer(impl, name)
    measure(impl, lambda: step(x, y))
