"""The benchmark layer shapes (``benchmarks/README.md`` lists them) and, for each, a
zero-argument call per library.

``make_op(shape, "fwd+bwd", "torch")`` returns a function that runs one forward and full
backward pass on data allocated once beforehand, so timing it measures the op and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IMPLS = ("fastconv", "torch", "reference")
PASSES = ("fwd", "fwd+bwd")


@dataclass(frozen=True)
class Shape:
    id: str
    n: int
    c_in: int
    hw: int
    c_out: int | None  # None: max pooling (C_out = C_in)
    k: int
    stride: int
    pad: int
    ref_n: int  # batch the NumPy reference runs at, to stay within a few seconds per call

    @property
    def op(self):
        return "max_pool2d" if self.c_out is None else "conv2d"

    @property
    def out_hw(self):
        return (self.hw + 2 * self.pad - self.k) // self.stride + 1


SHAPES = (
    Shape("seed_k5s2", 64, 1, 28, 16, 5, 2, 0, ref_n=64),
    Shape("fm_conv1", 64, 1, 28, 32, 3, 1, 1, ref_n=4),
    Shape("fm_conv2", 64, 32, 14, 64, 3, 1, 1, ref_n=8),
    Shape("res_56", 16, 64, 56, 64, 3, 1, 1, ref_n=1),
    Shape("res_s2", 16, 64, 56, 128, 3, 2, 1, ref_n=1),
    Shape("maxpool", 64, 32, 28, None, 2, 2, 0, ref_n=8),
)
SHAPE_IDS = tuple(s.id for s in SHAPES)


def impl_label(shape, impl):
    """``reference[N=2]`` when the reference runs on a smaller batch than the shape's."""
    return f"reference[N={shape.ref_n}]" if impl == "reference" and shape.ref_n < shape.n else impl


def make_op(shape, pass_, impl, n=None, seed=0):
    """A zero-argument function running ``pass_`` ("fwd" or "fwd+bwd") of ``shape`` with
    ``impl`` ("fastconv", "torch" or "reference") at batch ``n`` (default: the shape's, or
    ``shape.ref_n`` for the reference)."""
    if n is None:
        n = shape.ref_n if impl == "reference" else shape.n
    rng = np.random.default_rng(seed)
    c_out = shape.c_in if shape.c_out is None else shape.c_out
    x = rng.standard_normal((n, shape.c_in, shape.hw, shape.hw), dtype=np.float32)
    grad_y = rng.standard_normal((n, c_out, shape.out_hw, shape.out_hw), dtype=np.float32)
    if shape.c_out is None:
        args = ()
    else:
        bound = 1 / np.sqrt(shape.c_in * shape.k * shape.k)
        w = rng.uniform(-bound, bound, (c_out, shape.c_in, shape.k, shape.k)).astype(np.float32)
        b = rng.uniform(-bound, bound, c_out).astype(np.float32)
        args = (w, b)
    if impl == "torch":
        return _torch_op(shape, pass_, x, args, grad_y)
    if impl == "fastconv":
        import fastconv.functional as F
    else:
        import fastconv.reference as F
    s, p = shape.stride, shape.pad
    if shape.c_out is None:
        if pass_ == "fwd":
            return lambda: F.max_pool2d(x, shape.k, s, p)

        def pool_fwd_bwd():
            _, indices = F.max_pool2d(x, shape.k, s, p)
            return F.max_pool2d_backward(grad_y, indices, x.shape)

        return pool_fwd_bwd
    w, b = args
    if pass_ == "fwd":
        return lambda: F.conv2d(x, w, b, s, p)

    def conv_fwd_bwd():
        F.conv2d(x, w, b, s, p)
        return F.conv2d_backward(grad_y, x, w, s, p)

    return conv_fwd_bwd


def _torch_op(shape, pass_, x, args, grad_y):
    """The PyTorch twin: forward on plain tensors (no autograd graph); forward + backward
    with ``torch.autograd.grad`` so no ``.grad`` is accumulated between calls."""
    import torch
    import torch.nn.functional as TF

    fwd_only = pass_ == "fwd"
    inputs = [torch.from_numpy(a).requires_grad_(not fwd_only) for a in (x, *args)]
    grad_y = torch.from_numpy(grad_y)
    if shape.c_out is None:

        def forward():
            return TF.max_pool2d(inputs[0], shape.k, shape.stride, shape.pad)
    else:

        def forward():
            return TF.conv2d(*inputs, stride=shape.stride, padding=shape.pad)

    if fwd_only:
        return forward
    return lambda: torch.autograd.grad(forward(), inputs, grad_y)
