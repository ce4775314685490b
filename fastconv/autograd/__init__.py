"""Define-by-run automatic differentiation over fastconv's functional ops.

``Tensor`` wraps a NumPy array and records each operation applied to it; ``loss.backward()``
runs the recorded operations' backward functions (those of :mod:`fastconv.functional` for every
layer) in reverse order and accumulates into the ``grad`` of every leaf that requires it,
``nn.Parameter`` included. Any architecture whose forward is written with these operations and
``nn`` modules trains: branches joined by ``cat``, skip connections, shared modules, several
losses.
"""

from fastconv.autograd import ops as ops
from fastconv.autograd._heap import keep_heap
from fastconv.autograd.ops import cat, stack
from fastconv.autograd.tensor import Tensor, enable_grad, is_grad_enabled, no_grad

keep_heap()  # freed activations stay for the next step instead of page-faulting back in

__all__ = ["Tensor", "cat", "stack", "no_grad", "enable_grad", "is_grad_enabled"]
