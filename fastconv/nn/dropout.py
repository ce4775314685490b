"""``Dropout``."""

from __future__ import annotations

import fastconv.functional as F
from fastconv import init
from fastconv._checks import check_array, check_bool, check_probability, generator
from fastconv.autograd.tensor import _record
from fastconv.nn.module import Module


class Dropout(Module):
    """Inverted dropout, as ``torch.nn.Dropout``: in training each element is zeroed with
    probability ``p`` and the rest scaled by ``1/(1-p)``; in eval (or with ``p=0``) it is the
    identity and returns its input itself, as PyTorch does, without drawing a mask.

    The layer draws its masks from its own generator ``self.rng``: ``rng`` if that is a
    ``numpy.random.Generator``, else one seeded with the int ``rng``, or (None) with a seed drawn
    from ``fastconv.init``'s default generator, so ``fastconv.init.manual_seed`` makes it
    reproducible too. ``inplace`` is accepted for PyTorch compatibility and ignored.
    """

    def __init__(self, p=0.5, inplace=False, *, rng=None):
        super().__init__()
        self.p = check_probability("p", p)
        self.inplace = check_bool("inplace", inplace)
        if rng is None:
            rng = int(init.get_rng().integers(2**63))
        self.rng = generator(rng, default=init.get_rng())

    def forward(self, x):
        if not self.training or self.p == 0.0:
            # The identity: no mask to draw, multiply or keep. functional is not called, so
            # the input is checked here as functional would check it.
            self._ctx = ()
            return check_array("input", x)
        y, mask = F.dropout(x, self.p, self.training, self.rng)
        self._ctx = (mask,)
        return y

    def _forward_tensor(self, x):
        if not self.training or self.p == 0.0:
            check_array("input", x.data)
            return x  # the identity, as in layer mode and PyTorch
        y, mask = F.dropout(x.data, self.p, self.training, self.rng)
        return _record(y, (x,), lambda g: (F.dropout_backward(g, mask),))

    def backward(self, grad_out):
        ctx = self._saved()
        if not ctx:
            return check_array("grad_out", grad_out)
        return F.dropout_backward(grad_out, ctx[0])

    def extra_repr(self):
        return f"p={self.p}, inplace={self.inplace}"
