"""Threads: BLAS kept single-threaded across concurrent Python threads, results at 1 and 2
kernel threads bit-identical, calls from several Python threads at once correct."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import fastconv
import fastconv.functional as F
from fastconv import _threads, models, nn, optim, training


def _blas_threads():
    return [get() for get, _ in _threads._blas_thread_calls()]


def test_single_threaded_blas_holds_until_the_last_thread_leaves():
    before = _blas_threads()
    a_inside, b_inside, a_left = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with _threads.single_threaded_blas():
            a_inside.set()
            b_inside.wait(5)
        a_left.set()

    def b():
        a_inside.wait(5)
        with _threads.single_threaded_blas():
            b_inside.set()
            a_left.wait(5)
            seen["after a left"] = _blas_threads()  # a's exit must not restore BLAS threads

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen["after a left"] == [1] * len(before)
    assert _blas_threads() == before  # the last one out restored the user's setting


def test_concurrent_calls_from_python_threads_match_serial_and_stay_quiet(rng, capfd):
    x = rng.standard_normal((8, 16, 12, 12)).astype(np.float32)
    w = rng.standard_normal((24, 16, 3, 3)).astype(np.float32)
    lw = rng.standard_normal((10, 16 * 12 * 12)).astype(np.float32)

    def work(seed):
        g = np.random.default_rng(seed).standard_normal((8, 24, 12, 12)).astype(np.float32)
        y = F.conv2d(x, w, padding=1)
        grads = F.conv2d_backward(g, x, w, padding=1)
        z = F.linear(x.reshape(8, -1), lw)
        return y, grads, z

    serial = [work(s) for s in range(8)]
    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(work, range(8)))
    for (y1, g1, z1), (y2, g2, z2) in zip(serial, concurrent, strict=True):
        np.testing.assert_array_equal(y1, y2)
        np.testing.assert_array_equal(z1, z2)
        for a, b in zip(g1, g2, strict=True):
            np.testing.assert_array_equal(a, b)
    assert "OpenBLAS Warning" not in capfd.readouterr().err


@pytest.mark.parametrize("name", ["lenet", "bn"])
def test_training_step_bit_identical_at_1_and_2_threads(name, rng):
    x = rng.standard_normal((16, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 16)
    results = []
    for n in (1, 2):
        model = models.build(name, rng=0)
        optimizer = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        with fastconv.threads(n):
            for _ in range(2):
                loss, _ = training.train_step(model, nn.CrossEntropyLoss(), optimizer, x, y)
        results.append((loss, [p.data.copy() for p in model.parameters()]))
    (loss1, params1), (loss2, params2) = results
    assert loss1 == loss2
    for a, b in zip(params1, params2, strict=True):
        np.testing.assert_array_equal(a, b)
