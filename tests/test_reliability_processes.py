"""Import and processes: a read-only install without a home directory, fork and spawn.

Each case runs in a subprocess, so the environment (no writable cache, the threading layer,
the start method) is the one a user would have.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

import fastconv

PACKAGE = Path(fastconv.__file__).parent


def _read_only_copy(base):
    """A copy of the package in ``base/site`` (no compiled caches), every directory and file
    read-only, ``base`` itself too (so ``base/nonexistent`` cannot be created as a home)."""
    site = base / "site"
    shutil.copytree(PACKAGE, site / "fastconv", ignore=shutil.ignore_patterns("__pycache__"))
    for path in [site, *site.rglob("*")]:
        mode = 0o555 if path.is_dir() else 0o444
        os.chmod(path, mode)
    os.chmod(base, 0o555)
    return site


def _unprivileged():
    """A command prefix that removes root's power to write anywhere, or [] if not root."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: a read-only directory stays writable")
    return [setpriv, "--inh-caps=-all", "--bounding-set=-all"]


def test_import_without_a_writable_cache_warns_once_and_computes(tmp_path):
    base = Path(tempfile.mkdtemp(prefix="fastconv-ro-"))  # /tmp: readable by any user
    os.chmod(base, 0o755)
    try:
        site = _read_only_copy(base)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("NUMBA_") and k not in ("XDG_CACHE_HOME", "PYTHONPATH")
        }
        env.update(HOME=str(base / "nonexistent"), PYTHONPATH=str(site))
        code = textwrap.dedent(
            f"""
            import warnings
            warnings.simplefilter("always")
            import numpy as np
            import fastconv
            import fastconv.functional as F
            assert fastconv.__file__.startswith({str(site)!r}), fastconv.__file__
            x = np.array([[-1.0, 2.0]])
            print(F.relu(x).tolist(), F.linear(x, np.eye(2)).tolist())
            """
        )
        probe = "import os, sys; sys.exit(os.access(sys.argv[1], os.W_OK))"
        prefix = _unprivileged()
        writable = subprocess.run([*prefix, sys.executable, "-c", probe, str(site / "fastconv")])
        assert writable.returncode == 0, "the copy must not be writable in the subprocess"
        done = subprocess.run(
            [*prefix, sys.executable, "-c", code], env=env, cwd=base, capture_output=True,
            text=True, timeout=240,
        )  # fmt: skip
    finally:
        for path in [base, *base.rglob("*")]:
            if path.is_dir():
                os.chmod(path, 0o755)
        shutil.rmtree(base)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[[0.0, 2.0]] [[-1.0, 2.0]]"
    assert done.stderr.count("CacheWarning") == 1, done.stderr
    assert "NUMBA_CACHE_DIR" in done.stderr


_POOL = """
import multiprocessing, sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import numba

import fastconv
import fastconv.functional as F


def work(seed):
    x = np.random.default_rng(seed).standard_normal((4, 3, 12, 12)).astype(np.float32)
    w = np.random.default_rng(99).standard_normal((5, 3, 3, 3)).astype(np.float32)
    return float(F.conv2d(x, w).sum())


if __name__ == "__main__":
    with fastconv.threads(2 if fastconv.get_num_threads() >= 2 else 1):
        expected = [work(seed) for seed in range(4)]  # the parallel kernels have run
    print(numba.threading_layer(), flush=True)
    # Not multiprocessing.Pool: a child killed by GNU OpenMP would make it wait forever,
    # where the executor raises BrokenProcessPool.
    context = multiprocessing.get_context(sys.argv[1])
    with ProcessPoolExecutor(2, mp_context=context) as pool:
        got = list(pool.map(work, range(4)))
    assert got == expected, (got, expected)
    print("ok")
"""


def _pool(tmp_path, method, **env):
    script = tmp_path / "pool.py"
    script.write_text(_POOL)
    return subprocess.run(
        [sys.executable, str(script), method], env=dict(os.environ, **env), capture_output=True,
        text=True, timeout=240,
    )  # fmt: skip


def test_a_spawned_pool_computes_what_the_parent_does(tmp_path):
    done = _pool(tmp_path, "spawn")
    assert done.returncode == 0 and done.stdout.split()[-1] == "ok", done.stderr[-2000:]


def test_a_forked_pool_survives_parallel_kernels_in_the_parent(tmp_path):
    done = _pool(tmp_path, "fork")
    layer = done.stdout.split()[0] if done.stdout else ""
    if layer == "omp" and done.returncode != 0:
        # numba fell back to GNU OpenMP, which kills forked children: tbb (a dependency of
        # fastconv on the platforms that have the wheel) is not installed here.
        pytest.skip("numba's tbb threading layer is not available (pip install tbb)")
    assert done.returncode == 0 and done.stdout.split()[-1] == "ok", done.stderr[-2000:]


def test_a_forked_pool_under_the_workqueue_layer(tmp_path):
    # numba's other fork-safe layer, used where there is no tbb: fastconv works under it too.
    done = _pool(tmp_path, "fork", NUMBA_THREADING_LAYER="workqueue")
    assert done.stdout.split()[0] == "workqueue", done.stderr[-2000:]
    assert done.returncode == 0 and done.stdout.split()[-1] == "ok", done.stderr[-2000:]


def test_a_read_only_run_directory_is_refused_before_training(tmp_path):
    # A new run under a read-only directory, and a resume of a run whose directory became
    # read-only: both refused before anything is trained, created, or loaded into the model.
    setup = textwrap.dedent(
        """
        import numpy as np
        from fastconv import nn, optim, training
        from fastconv.datasets import DataLoader
        net = nn.Linear(2, 2, rng=0)
        initial = net.weight.data.copy()
        loader = DataLoader(np.ones((4, 2), np.float32), np.zeros(4, np.int64), 2, seed=0)
        def train(out, resume=False):
            training.train(net, optim.SGD(net.parameters(), lr=0.1), loader, None, 2,
                           out_dir=out, resume=resume, progress=False, log=None)
        """
    )
    fresh, resumed = tmp_path / "locked", tmp_path / "run"
    fresh.mkdir()
    subprocess.run(
        [sys.executable, "-c", setup + f"train({str(resumed)!r})"], check=True, timeout=120
    )
    for path in (fresh, resumed):
        os.chmod(path, 0o555)
    code = setup + textwrap.dedent(
        f"""
        for out, resume in (({str(fresh / "run")!r}, False), ({str(resumed)!r}, True)):
            try:
                train(out, resume)
            except training.RunDirectoryError as e:
                print(str(e).split(":")[0], np.array_equal(net.weight.data, initial))
        """
    )
    try:
        done = subprocess.run(
            [*_unprivileged(), sys.executable, "-c", code], capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
    finally:
        for path in (fresh, resumed):
            os.chmod(path, 0o755)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == [
        f"cannot write in the run directory {fresh / 'run'} True",
        f"cannot write in the run directory {resumed} True",
    ]
    assert not (fresh / "run").exists()
