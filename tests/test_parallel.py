"""fastconv._parallel.parallel_for: shares, errors, several Python threads at once."""

import threading

import numpy as np
import pytest

import fastconv
from fastconv._config import jit
from fastconv._parallel import parallel_for


@jit
def _mark(lo, hi, share, seen, owner):
    for i in range(lo, hi):
        seen[i] += 1
        owner[i] = share


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 64])
@pytest.mark.parametrize("threads", [1, 2])
def test_every_iteration_runs_once_in_contiguous_shares(n, threads):
    if threads > fastconv.get_num_threads():
        pytest.skip("one thread only")
    seen, owner = np.zeros(n, np.int64), np.full(n, -1, np.int64)
    with fastconv.threads(threads):
        parallel_for(_mark, n, seen, owner)
    np.testing.assert_array_equal(seen, 1)
    t = max(1, min(threads, n))
    expected = np.concatenate([np.full(n * (k + 1) // t - n * k // t, k) for k in range(t)])
    np.testing.assert_array_equal(owner, expected.astype(np.int64))


def _fail_in(share_to_fail, done):
    def kernel(lo, hi, share):
        done.append(share)
        if share == share_to_fail:
            raise RuntimeError(f"share {share} failed")

    return kernel


@pytest.mark.parametrize("failing", [0, 1])
def test_an_error_in_any_share_is_raised_after_all_finish_and_the_pool_still_works(failing):
    if fastconv.get_num_threads() < 2:
        pytest.skip("one thread only")
    done = []
    with fastconv.threads(2), pytest.raises(RuntimeError, match=f"share {failing} failed"):
        parallel_for(_fail_in(failing, done), 2)
    assert sorted(done) == [0, 1]
    seen, owner = np.zeros(4, np.int64), np.zeros(4, np.int64)
    with fastconv.threads(2):
        parallel_for(_mark, 4, seen, owner)
    np.testing.assert_array_equal(seen, 1)


def test_calls_from_several_python_threads_at_once_each_run_completely():
    # A call that finds the workers busy runs its shares itself.
    n, rounds = 1000, 50
    results = {}

    def work(k):
        total = np.zeros(n, np.int64)
        for _ in range(rounds):
            seen, owner = np.zeros(n, np.int64), np.zeros(n, np.int64)
            parallel_for(_mark, n, seen, owner)
            total += seen
        results[k] = total

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == [0, 1, 2, 3]
    for total in results.values():
        np.testing.assert_array_equal(total, rounds)
