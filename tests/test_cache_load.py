"""Kernels load from numba's on-disk cache without numba's compiler set-up
(``fastconv._cache_load``): a later process gets the same results, compiles nothing and never
imports the registries only compiling needs."""

import json
import os
import subprocess
import sys
import textwrap

import numba
from helpers import COMPILE_LISTENER

from fastconv import _cache_load
from fastconv.kernels import conv_blocked, elementwise, gemm, matmul, optim, pool

# Parallel kernels (numba's thread pool starts from the cache), kernels called through their
# address (linear), and views of arrays (numba's runtime counts their references). Prints the
# kernels this process compiled, whether the compile-only registries got imported (numba's
# cffi support is one of them) and the results.
PROGRAM = COMPILE_LISTENER + textwrap.dedent(
    """
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 6, 6)).astype(np.float32)
    y, idx = F.max_pool2d(x, 2)
    gx = F.max_pool2d_backward(np.ones_like(y), idx, x.shape)
    h = F.relu(F.linear(y.reshape(4, -1), rng.standard_normal((5, 27)).astype(np.float32)))
    results = [a.tolist() for a in (y, idx, gx, h)]
    print(json.dumps({"compiled": compiled, "results": results,
                      "registries": "numba.core.typing.cffi_utils" in sys.modules}))
    """
)


def _run(cache):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache), "FASTCONV_PRECOMPILE": "0"}
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_a_later_process_loads_without_the_compiler_set_up(tmp_path):
    first = _run(tmp_path)
    assert "_maxpool2d_2x2_f32" in first["compiled"]  # this one compiled...
    assert first["registries"]  # ... so numba set its compiler up
    second = _run(tmp_path)
    assert second["compiled"] == []  # everything came from the cache...
    assert not second["registries"]  # ... without the compiler's registries
    assert second["results"] == first["results"]


def test_every_kernel_gets_the_quick_loading_cache():
    dispatchers = [
        obj
        for module in (conv_blocked, elementwise, gemm, matmul, optim, pool)
        for obj in vars(module).values()
        if isinstance(obj, numba.core.registry.CPUDispatcher)
    ]
    assert len(dispatchers) > 10
    expected = _cache_load.cache_class()
    assert expected is _cache_load.QuickLoadCache  # the numba this runs on has what it needs
    assert all(type(d._cache) is expected for d in dispatchers)
