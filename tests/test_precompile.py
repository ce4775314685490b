"""The helper process that compiles kernels alongside a program's first run on a new machine
(``fastconv._precompile``). Each test gives a subprocess an empty JIT cache of its own."""

import json
import os
import subprocess
import sys
import textwrap
import time

from helpers import COMPILE_LISTENER

# A program's first convolution (a cache miss that starts the helper), then a report of which
# fastconv kernels this process compiled itself.
PROGRAM = COMPILE_LISTENER + textwrap.dedent(
    """
    x = np.ones((2, 32, 14, 14), np.float32)
    w = np.ones((64, 32, 3, 3), np.float32)
    y = F.conv2d(x, w, padding=1)
    if sys.argv[1] == "backward":
        F.conv2d_backward(y, x, w, padding=1)
        F.relu_backward(x, x)
    print(json.dumps(compiled))
    """
)


def _run(cache, mode, **env):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache), **env}
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, mode], env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def _files(cache, name):
    return list(cache.rglob(name))


def test_no_helper_when_turned_off(tmp_path):
    _run(tmp_path, "forward", FASTCONV_PRECOMPILE="0")
    time.sleep(1)
    assert not _files(tmp_path, "fastconv-precompile.*")
    assert not _files(tmp_path, "*_weight_grad_item*.nbi")  # nothing compiled it


def test_helper_fills_the_cache_for_the_next_process(tmp_path):
    first = _run(tmp_path, "forward")
    assert "_conv2d_fwd_item" in first and "_weight_grad_item" not in first
    deadline = time.monotonic() + 600
    while not _files(tmp_path, "fastconv-precompile.done"):
        assert time.monotonic() < deadline, "the helper did not finish"
        time.sleep(0.5)
    assert not _files(tmp_path, "fastconv-precompile.lock")  # released when it finished
    # The helper compiled the backward kernels with the very types the program uses: the next
    # process loads them instead of compiling (and starts no helper: the marker is there).
    second = _run(tmp_path, "backward")
    assert not {"_weight_grad_item", "_conv2d_bwd_weight_blocked", "_relu_bwd"} & set(second)


def test_install_listens_except_when_turned_off_or_frozen(monkeypatch):
    """A frozen application's executable is the application itself: running it with
    ``-m fastconv._precompile`` would start the application again, so no helper there."""
    from fastconv import _precompile

    registered = []
    monkeypatch.setattr(_precompile.event, "register", lambda kind, li: registered.append(kind))
    monkeypatch.delenv(_precompile.ENV, raising=False)
    _precompile.install()
    assert registered == ["numba:compile"]
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    _precompile.install()
    monkeypatch.setattr(sys, "frozen", False)
    monkeypatch.setenv(_precompile.ENV, "0")
    _precompile.install()
    assert registered == ["numba:compile"]
