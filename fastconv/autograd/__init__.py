"""Define-by-run automatic differentiation over fastconv's functional ops.

``Tensor`` wraps a NumPy array and records each operation applied to it; ``loss.backward()``
runs the recorded operations' backward functions (those of :mod:`fastconv.functional` for every
layer) in reverse order and accumulates into the ``grad`` of every leaf that requires it,
``nn.Parameter`` included. Any architecture whose forward is written with these operations and
``nn`` modules trains: branches joined by ``cat``, skip connections, shared modules, several
losses::

    import fastconv
    from fastconv import Tensor, nn, optim

    class Block(nn.Module):  # two branches joined on channels: not a Sequential
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(1, 8, 1)
            self.b = nn.Sequential(nn.Conv2d(1, 4, 1), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1))

        def forward(self, x):
            return fastconv.cat([self.a(x), self.b(x)], dim=1)

    model = nn.Sequential(Block(), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(16, 10))
    optimizer = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss = nn.CrossEntropyLoss()(model(Tensor(images)), labels)  # images (N, 1, H, W) float32
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

The same model also trains in layer mode (``training.train_step``, arrays in and out): a module
that defines only ``forward`` runs it through autograd and its ``backward`` runs that graph.
"""

from fastconv.autograd import ops as ops
from fastconv.autograd._heap import keep_heap
from fastconv.autograd.ops import cat, stack
from fastconv.autograd.tensor import Tensor, enable_grad, is_grad_enabled, no_grad

keep_heap()  # freed activations stay for the next step instead of page-faulting back in

__all__ = ["Tensor", "cat", "stack", "no_grad", "enable_grad", "is_grad_enabled"]
