"""Data-parallel training over MPI (``fastconv.distributed``) and the sharded ``DataLoader``.

The MPI tests run ``mpiexec -n 2`` in subprocesses (with timeouts, so a hang fails instead of
blocking CI) and are skipped, with the reason, without mpi4py or mpiexec. The ranks' side is
``mpi_worker.py``; the one-process runs they are compared with are its functions, run here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import mpi_worker
import numpy as np
import pytest

from fastconv.datasets import DataLoader

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
TIMEOUT = 180  # seconds per mpiexec run: numba compiles in each rank on a cold cache


# ---------------------------------------------------------------------------------------------
# The optional extra
# ---------------------------------------------------------------------------------------------


def _python(code):
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT
    )


def test_import_fastconv_leaves_mpi4py_alone_and_the_module_names_the_extra():
    done = _python(
        "import sys, fastconv, fastconv.training\n"
        "assert 'mpi4py' not in sys.modules, 'import fastconv imported mpi4py'\n"
        "sys.modules['mpi4py'] = None  # as if it were not installed\n"
        "try:\n"
        "    import fastconv.distributed\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    assert done.returncode == 0, done.stderr
    assert "fastconv[mpi]" in done.stdout and "mpi4py" in done.stdout


def test_example_without_mpi4py_says_which_extra(tmp_path):
    done = _python(
        "import runpy, sys\n"
        "sys.modules['mpi4py'] = None  # as if it were not installed\n"
        f"sys.argv = ['train_fashion_mnist.py', '--distributed', '--out', {str(tmp_path)!r}]\n"
        "runpy.run_path('examples/train_fashion_mnist.py', run_name='__main__')\n"
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "error: --distributed:" in done.stderr and "fastconv[mpi]" in done.stderr


# ---------------------------------------------------------------------------------------------
# Sharding (no MPI needed)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shuffle", [True, False], ids=["shuffle", "in-order"])
@pytest.mark.parametrize("drop_last", [False, True], ids=["keep-last", "drop-last"])
@pytest.mark.parametrize("world_size", [2, 3])
def test_shards_are_disjoint_slices_of_one_process_batches(shuffle, drop_last, world_size):
    x = np.arange(145 * 2).reshape(145, 2)
    y = np.arange(145)
    whole = DataLoader(x, y, 16, shuffle=shuffle, drop_last=drop_last, seed=3)
    shards = [
        DataLoader(x, y, 16, shuffle=shuffle, drop_last=drop_last, seed=3, rank=r,
                   world_size=world_size)
        for r in range(world_size)
    ]  # fmt: skip
    assert all(len(s) == len(whole) for s in shards)
    for epoch in range(2):  # the second epoch's shuffle is the same on every rank too
        for i, (batch, parts) in enumerate(zip(whole, zip(*shards, strict=True), strict=True)):
            sizes = [len(py) for _, py in parts]
            assert max(sizes) - min(sizes) <= 1, (epoch, i, sizes)
            np.testing.assert_array_equal(np.concatenate([px for px, _ in parts]), batch[0])
            np.testing.assert_array_equal(np.concatenate([py for _, py in parts]), batch[1])
    # The last global batch of 1 sample (145 = 9 * 16 + 1) leaves the other ranks empty.
    if not drop_last:
        assert [len(py) for py in (list(s)[-1][1] for s in shards)] == [1] + [0] * (world_size - 1)


def test_unsharded_loader_is_unchanged():
    x, y = np.arange(50), np.arange(50) * 10
    batches = list(DataLoader(x, y, 16, seed=7))
    order = np.random.default_rng(7).permutation(50)
    assert [len(b) for b, _ in batches] == [16, 16, 16, 2]
    for i, (xb, yb) in enumerate(batches):
        np.testing.assert_array_equal(xb, order[i * 16 : (i + 1) * 16])
        np.testing.assert_array_equal(yb, xb * 10)
    loader = DataLoader(x, y, 16, shuffle=False)
    assert (loader.rank, loader.world_size) == (0, 1)
    first = next(iter(loader))[0]
    assert first.base is x  # unshuffled batches are still views


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"rank": 0}, ValueError, "rank and world_size go together"),
        ({"world_size": 2}, ValueError, "rank and world_size go together"),
        ({"rank": 0, "world_size": 0}, ValueError, "world_size must be a positive int"),
        ({"rank": 2, "world_size": 2}, ValueError, r"rank must be in \[0, world_size=2\)"),
        ({"rank": -1, "world_size": 2}, ValueError, "rank must be in"),
        ({"rank": 1.0, "world_size": 2}, TypeError, "rank must be an int"),
        ({"rank": 0, "world_size": 32}, ValueError, "batch_size .* at least world_size=32"),
    ],
    ids=["rank-alone", "world-alone", "world-0", "rank-too-big", "rank-negative", "rank-float",
         "batch-too-small"],
)  # fmt: skip
def test_bad_sharding_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        DataLoader(np.zeros(40), np.zeros(40), 16, **kwargs)


def test_distributed_training_refuses_a_summed_loss():
    """Averaging the ranks' gradients is only right for a mean loss; refused before any step
    (so no group is needed to see it)."""
    from fastconv import models, nn, optim, training

    model = models.seed(rng=0)
    optimizer = optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(np.zeros((8, 1, 28, 28), np.float32), np.zeros(8, np.int64), 4)
    before = model.state_dict()
    for call in (
        lambda crit: training.train(model, optimizer, loader, criterion=crit, distributed=object()),
        lambda crit: training.train_epoch(model, loader, crit, optimizer, distributed=object()),
    ):
        with pytest.raises(ValueError, match="reduction='mean'.* got 'sum'"):
            call(nn.CrossEntropyLoss(reduction="sum"))
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


# ---------------------------------------------------------------------------------------------
# Under mpiexec
# ---------------------------------------------------------------------------------------------


def _mpiexec():
    pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install 'fastconv[mpi]')")
    beside = Path(sys.executable).with_name("mpiexec")  # the mpich wheel's, in the same env
    found = str(beside) if beside.is_file() else shutil.which("mpiexec")
    if found is None:
        pytest.skip("no mpiexec (pip install 'fastconv[mpi]' brings the mpich wheel's)")
    return found


def _mpirun(*args, ranks=2):
    # Without NUMBA_NUM_THREADS, so that the ranks take their default share of the cores.
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_NUM_THREADS"}
    return subprocess.run(
        [_mpiexec(), "-n", str(ranks), sys.executable, *map(str, args)],
        capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT, env=env,
    )  # fmt: skip


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Every case of mpi_worker.CASES trained on 2 ranks: ``{"<case>/<rank>/<key>": array}``."""
    out = tmp_path_factory.mktemp("mpi") / "states.npz"
    done = _mpirun(TESTS / "mpi_worker.py", "train", out)
    assert done.returncode == 0, done.stdout + done.stderr
    with np.load(out) as npz:
        return dict(npz)


def _rank_state(results, case, rank):
    prefix = f"{case}/{rank}/"
    return {k[len(prefix) :]: v for k, v in results.items() if k.startswith(prefix)}


@pytest.mark.parametrize(
    "case, atol", [("loop64", 1e-12), ("train64", 1e-12), ("train32", 1e-5)],
    ids=["allreduce-by-hand-float64", "train-float64", "train-float32"],
)  # fmt: skip
def test_two_ranks_train_as_one_process_on_the_global_batch(two_ranks, case, atol):
    """20 steps of SGD with momentum, global batch 16, the last batch of each epoch a single
    sample (rank 1's slice empty): the ranks end bit-identical, and equal to one process."""
    _, dtype, loop, model_name = next(c for c in mpi_worker.CASES if c[0] == case)
    expected = mpi_worker.run(dtype, loop, model_name)
    initial = mpi_worker.models.build(model_name, rng=0).to(dtype).state_dict()
    rank0, rank1 = _rank_state(two_ranks, case, 0), _rank_state(two_ranks, case, 1)
    assert sorted(rank0) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(rank1[key], rank0[key], err_msg=f"rank 1 vs 0: {key}")
        assert rank0[key].dtype == value.dtype
        np.testing.assert_allclose(rank0[key], value, rtol=0, atol=atol, err_msg=key)
        # The training moved every array far more than the tolerance.
        assert np.abs(value - initial[key]).max() > 1000 * atol, key


def test_batch_norm_uses_local_statistics_and_rank_0s_running_stats(two_ranks):
    """The bn network (BatchNorm, Dropout) on 2 ranks equals the documented semantics simulated
    in one process: per-rank batch statistics, weighted gradient mean, rank 0's buffers."""
    expected = mpi_worker.simulate(np.float64, "bn")
    rank0, rank1 = _rank_state(two_ranks, "bn64", 0), _rank_state(two_ranks, "bn64", 1)
    for key, value in expected.items():
        np.testing.assert_array_equal(rank1[key], rank0[key], err_msg=f"rank 1 vs 0: {key}")
        np.testing.assert_allclose(rank0[key], value, rtol=0, atol=1e-12, err_msg=key)
    # Rank 1's slice of each epoch's last batch is empty, yet the counts are rank 0's 20 steps.
    assert int(rank1["1.num_batches_tracked"]) == 20


def test_public_functions_on_two_ranks():
    """broadcast_parameters, allreduce_gradients (plain and weighted means, missing gradients,
    two dtypes, bad count), a network mismatch raised on both ranks, the thread budget: the
    assertions run on the ranks (mpi_worker.check_api)."""
    done = _mpirun(TESTS / "mpi_worker.py", "api")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("api ok") == 2


def test_a_failing_rank_ends_the_job_with_an_error():
    """Rank 1 raises while rank 0 waits for it in the gradient allreduce: without the abort
    hook this hangs (and the timeout fails the test)."""
    done = _mpirun(TESTS / "mpi_worker.py", "fail")
    assert done.returncode != 0
    assert "rank 1 fails on purpose" in done.stderr


# ---------------------------------------------------------------------------------------------
# The example under mpiexec
# ---------------------------------------------------------------------------------------------

N_TRAIN, N_TEST = 89, 40  # 89 = 5 * 16 + 9: the last global batch splits 5 / 4


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Four tiny IDX files: class ``k`` images are noise plus a bright row ``2k + 4``."""
    root = tmp_path_factory.mktemp("tiny-fashion")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 80, size=(n, 28, 28), dtype=np.uint8)
        images[np.arange(n), 2 * labels + 4, :] = 255
        for name, array in ((f"{prefix}-images-idx3-ubyte", images),
                            (f"{prefix}-labels-idx1-ubyte", labels)):  # fmt: skip
            header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
            (root / name).write_bytes(header + array.tobytes())
    return root


def _example_args(data_dir, out, *extra):
    return [
        "--model", "seed", "--data-dir", str(data_dir), "--out", str(out), "--batch-size", "16",
        "--no-progress", *extra,
    ]  # fmt: skip


def test_example_trains_resumes_and_matches_one_process(data_dir, tmp_path):
    script = ROOT / "examples" / "train_fashion_mnist.py"
    out = tmp_path / "mpi"
    args = _example_args(data_dir, out, "--distributed")
    done = _mpirun(script, *args, "--epochs", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("done: 1 epochs") == 1  # rank 0 alone prints
    threads = max(1, len(os.sched_getaffinity(0)) // 2)  # each rank's share of the cores
    assert f"2 ranks x {threads} threads each" in done.stdout

    resumed = _mpirun(script, *args, "--epochs", "2", "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert resumed.stdout.count(f"resumed {out} after epoch 1") == 1
    history = json.loads((out / "history.json").read_text())["epochs"]
    assert [h["epoch"] for h in history] == [1, 2]

    # Refused on every rank alike (a non-empty --out): exit 2, one message, no hang.
    refused = _mpirun(script, *args, "--epochs", "2")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr.count("is not empty") == 1

    # A loss that becomes NaN on the ranks: all stop before the step, exit 3, one message, and
    # the checkpoint of epoch 2 is left as it was.
    before = (out / "train_state.npz").read_bytes()
    nan = _mpirun(script, *args, "--epochs", "3", "--resume", "--lr", "1e30")
    assert nan.returncode == 3, nan.stdout + nan.stderr
    assert nan.stderr.count("training loss became") == 1
    assert (out / "train_state.npz").read_bytes() == before

    # One process, same global batch: the same weights (float32) and history.
    spec = importlib.util.spec_from_file_location("train_fashion_mnist", script)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    single = tmp_path / "single"
    assert example.main(_example_args(data_dir, single, "--epochs", "2", "--threads", "1")) == 0
    with np.load(out / "checkpoint.npz") as a, np.load(single / "checkpoint.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-5, err_msg=key)
    alone = json.loads((single / "history.json").read_text())["epochs"]
    for mine, theirs in zip(history, alone, strict=True):
        for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-6), key
