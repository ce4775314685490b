"""A LeNet training step (forward, loss, backward, SGD step, batch 64) in layer mode and through
autograd: one benchmark group, so the table shows the ratio.

Layer mode is ``training.train_step`` (``model.backward(criterion.backward())``); autograd
calls the same model on a ``fastconv.Tensor`` and runs ``loss.backward()``. Both make the same
functional calls, except that autograd skips the first convolution's input gradient (the input
does not require grad), as PyTorch does.

``python -m benchmarks.bench_autograd [--rounds N]`` measures the two interleaved (one step of
each in turn, so a busy machine slows both alike) and prints the medians and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import pytest

from benchmarks._nets import BATCH, SGD_ARGS, fastconv_trainer, synthetic_batch


def autograd_trainer(name, seed=0):
    """``(model, train_step)`` as ``_nets.fastconv_trainer``, the step through autograd."""
    from fastconv import Tensor, models, nn, optim

    model = models.build(name, rng=seed)
    optimizer = optim.SGD(model.parameters(), **SGD_ARGS[name])
    criterion = nn.CrossEntropyLoss()

    def train_step(x, y):
        loss = criterion(model(Tensor(x)), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    return model, train_step


TRAINERS = {"layer": fastconv_trainer, "autograd": autograd_trainer}


@pytest.mark.benchmark(group="train_step lenet: layer mode vs autograd", min_rounds=10)
@pytest.mark.parametrize("mode", list(TRAINERS))
def test_train_step_modes(measure, mode):
    x, y = synthetic_batch(BATCH)
    _, step = TRAINERS[mode]("lenet")
    measure(mode, lambda: step(x, y))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=60, help="steps per mode (default 60)")
    parser.add_argument("--threads", type=int, default=2, help="threads (default 2)")
    args = parser.parse_args()
    import fastconv

    x, y = synthetic_batch(BATCH)
    steps = {mode: make("lenet")[1] for mode, make in TRAINERS.items()}
    times = {mode: [] for mode in steps}
    with fastconv.threads(args.threads):
        for step in steps.values():  # compile and plan outside the timing
            step(x, y)
            step(x, y)
        for _ in range(args.rounds):
            for mode, step in steps.items():
                start = time.perf_counter()
                step(x, y)
                times[mode].append(time.perf_counter() - start)
    medians = {mode: statistics.median(t) for mode, t in times.items()}
    for mode, m in medians.items():
        print(f"{mode:>8}: median {m * 1e3:.2f} ms per step ({args.rounds} steps)")
    print(f"autograd / layer mode: {medians['autograd'] / medians['layer']:.3f}")


if __name__ == "__main__":
    main()
