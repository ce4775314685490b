"""PyTorch's twin of ``examples/train_fashion_mnist.py``, for report.py's memory comparison.

    python -m benchmarks.train_torch --model lenet --epochs 1 --limit 6400

The same network and optimizer as the benchmarks (``benchmarks._nets.torch_trainer``), the same
FashionMNIST files, normalisation, batch size and epochs as the example; it trains, then tests
after each epoch, and prints one line per epoch in the example's format. It writes nothing.

The IDX files are read here with NumPy rather than with ``fastconv.datasets``: importing
fastconv loads numba and llvmlite (about 80 MiB), which would count against PyTorch's peak
memory. report.py checks that both readers give the same arrays.
"""

from __future__ import annotations

import argparse
import gzip
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks._nets import BATCH, NETS, torch_trainer

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
MEAN, STD = 0.2860, 0.3530  # as in the example: per-pixel mean and std of the training images
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}  # fmt: skip


def _read_idx(path: Path, header: int) -> np.ndarray:
    """The uint8 payload of an IDX file (plain or ``.gz``) after its ``header`` bytes."""
    if not path.is_file():
        path = path.with_name(path.name + ".gz")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return np.frombuffer(raw, np.uint8, offset=header)


def load_split(split: str, data_dir=DATA_DIR):
    """``(images uint8 (N, 28, 28), labels int64 (N,))``, as ``fastconv.datasets`` returns."""
    images, labels = (Path(data_dir) / stem for stem in FILES[split])
    x = _read_idx(images, 16).reshape(-1, 28, 28)  # header: magic + 3 dimensions
    y = _read_idx(labels, 8).astype(np.int64)  # header: magic + 1 dimension
    return x, y


def normalise(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28), as the example does."""
    x = images.astype(np.float32)[:, None] / np.float32(255)
    return (x - np.float32(MEAN)) / np.float32(STD)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description="Train a network of the benchmarks on FashionMNIST with PyTorch.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", choices=NETS, default="lenet")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=BATCH)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", type=Path, default=DATA_DIR, help="directory with the IDX files")
    p.add_argument("--limit", type=int, default=60000, help="train on the first N images")
    p.add_argument("--test-limit", type=int, default=10000, help="test on the first N images")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    x_train, y_train = load_split("train", args.data_dir)
    x_test, y_test = load_split("test", args.data_dir)
    x_train, y_train = normalise(x_train[: args.limit]), y_train[: args.limit]
    x_test, y_test = normalise(x_test[: args.test_limit]), y_test[: args.test_limit]
    model, train_step = torch_trainer(args.model, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    print(
        f"{args.model}: torch {torch.__version__}, {len(y_train):,} train / {len(y_test):,} "
        f"test images, batch {args.batch_size}, {torch.get_num_threads()} threads"
    )
    for epoch in range(1, args.epochs + 1):
        model.train()
        start = time.perf_counter()
        order = rng.permutation(len(y_train))
        total = 0.0
        for i in range(0, len(order), args.batch_size):
            batch = order[i : i + args.batch_size]
            total += train_step(x_train[batch], y_train[batch]) * len(batch)
        seconds = time.perf_counter() - start
        model.eval()
        correct, test_loss = 0, 0.0
        with torch.no_grad():
            for i in range(0, len(y_test), 1000):
                logits = model(torch.from_numpy(x_test[i : i + 1000]))
                target = torch.from_numpy(y_test[i : i + 1000])
                test_loss += torch.nn.functional.cross_entropy(logits, target, reduction="sum")
                correct += int((logits.argmax(dim=1) == target).sum())
        print(
            f"epoch {epoch}: train loss {total / len(y_train):.4f} | test loss "
            f"{float(test_loss) / len(y_test):.4f} acc {correct / len(y_test):.2%} | "
            f"{seconds:.1f} s, {len(y_train) / seconds:.0f} img/s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
