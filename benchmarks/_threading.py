"""numba's threading layer in a process that times fastconv and PyTorch side by side.

Alone in a process, fastconv runs alike under numba's tbb layer (its default where the tbb
wheel is installed, chosen for fork safety) and under OpenMP: medians of 60 steps, lenet 11.4
vs 10.3-11.6 ms, seed 0.94-0.97 vs 0.85-0.99 ms, fm_conv2's forward 1.57 vs 1.52 ms. In one
process with PyTorch, whose OpenMP workers spin for a while after each call, numba's tbb
workers lost the cores to them: fm_conv2's forward took 3.1 ms instead of 1.5, as if on one
thread. With numba on OpenMP as well the two pools coexist (1.5 ms). So the benchmarks, which
interleave the libraries in one process, run numba on OpenMP unless ``NUMBA_THREADING_LAYER``
says otherwise; the start-up and memory runs are separate processes with the default layer.
"""

import os

import numba


def use_openmp_unless_set():
    """Before the first parallel kernel: numba's OpenMP layer, unless the environment names one."""
    if not os.environ.get("NUMBA_THREADING_LAYER"):
        numba.config.THREADING_LAYER = "omp"
