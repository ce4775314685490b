"""``MaxPool2d``, ``AvgPool2d`` and ``AdaptiveAvgPool2d``."""

from __future__ import annotations

import fastconv.functional as F
from fastconv._checks import check_bool, is_int, pair, pool_padding
from fastconv.autograd.tensor import Tensor, _record, needs_grad
from fastconv.nn.module import Module


def _pool_config(layer, kernel_size, stride, padding, ceil_mode):
    """Check (at construction, as PyTorch does) and store the options both poolings share;
    ``stride=None`` means ``stride=kernel_size``. Values are kept as given, as PyTorch's repr
    shows them."""
    pool_padding(padding, kernel_size)  # checks kernel_size too
    if stride is not None:
        pair("stride", stride, minimum=1)
    layer.kernel_size = kernel_size
    layer.stride = kernel_size if stride is None else stride
    layer.padding = padding
    layer.ceil_mode = check_bool("ceil_mode", ceil_mode)


class MaxPool2d(Module):
    """Max pooling, as ``torch.nn.MaxPool2d``: (N, C, H, W) -> (N, C, OH, OW).

    ``stride=None`` means ``stride=kernel_size``; ``padding`` (implicit -inf) is at most half
    the kernel size. The layer returns ``y``, or ``(y, indices)`` with ``return_indices=True``
    (int64, shaped like ``y``, each the flat index ``ih * W + iw`` of the max in its input
    plane, as ``F.max_pool2d`` returns them); in autograd mode ``indices`` is a Tensor that
    does not require grad, as in PyTorch. Either way ``backward(grad_out)`` takes the gradient
    of ``y``. In training the argmax indices are cached for backward; in eval mode without
    ``return_indices`` only the values are computed (a backward after an eval forward finds
    the argmax again).
    """

    def __init__(
        self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False
    ):
        super().__init__()
        _pool_config(self, kernel_size, stride, padding, ceil_mode)
        pair("dilation", dilation, minimum=1)
        self.dilation = dilation
        self.return_indices = check_bool("return_indices", return_indices)

    def _args(self):
        return self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode

    def forward(self, x):
        if self.training or self.return_indices:
            y, indices = F.max_pool2d(x, *self._args())
            self._ctx = (indices, x.shape)
            return (y, indices) if self.return_indices else y
        # Inference rarely backpropagates: no int64 index array. x is kept (a reference, not a
        # copy) because PyTorch allows a backward in eval mode; the argmax is then found again.
        y = F._max_pool2d_values(x, *self._args())
        self._ctx = (x,)
        return y

    def _forward_tensor(self, x):
        if not needs_grad(x) and not self.return_indices:
            # inference: no int64 index array, as in eval's layer mode
            return _record(F._max_pool2d_values(x.data, *self._args()), (x,), None)
        y, indices = F.max_pool2d(x.data, *self._args())
        shape = x.shape
        out = _record(y, (x,), lambda g: (F._max_pool2d_backward_trusted(g, indices, shape),))
        return (out, Tensor(indices)) if self.return_indices else out

    def backward(self, grad_out):
        """Gradient with respect to the input, given the gradient of ``y`` (N, C, OH, OW)."""
        ctx = self._saved()
        if len(ctx) == 1:  # after an eval forward
            (x,) = ctx
            ctx = (F.max_pool2d(x, *self._args())[1], x.shape)
        # The indices come from this layer's own forward: no need to scan their range.
        return F._max_pool2d_backward_trusted(grad_out, *ctx)

    def extra_repr(self):
        # PyTorch's repr leaves return_indices out; fastconv shows it when it is set.
        indices = ", return_indices=True" if self.return_indices else ""
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, ceil_mode={self.ceil_mode}{indices}"
        )


class AvgPool2d(Module):
    """Average pooling, as ``torch.nn.AvgPool2d``: (N, C, H, W) -> (N, C, OH, OW).

    ``count_include_pad`` decides whether zero padding counts in each window's divisor.
    """

    def __init__(
        self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True
    ):
        super().__init__()
        _pool_config(self, kernel_size, stride, padding, ceil_mode)
        self.count_include_pad = check_bool("count_include_pad", count_include_pad)

    def _args(self):
        return self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad

    def forward(self, x):
        y = F.avg_pool2d(x, *self._args())
        self._ctx = x.shape
        return y

    def backward(self, grad_out):
        return F.avg_pool2d_backward(grad_out, self._saved(), *self._args())

    def _forward_tensor(self, x):
        args, shape = self._args(), x.shape
        y = F.avg_pool2d(x.data, *args)
        return _record(y, (x,), lambda g: (F.avg_pool2d_backward(g, shape, *args),))

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(Module):
    """Adaptive average pooling, as ``torch.nn.AdaptiveAvgPool2d``: (N, C, H, W) ->
    (N, C, OH, OW) for ``output_size`` OH (= OW) or (OH, OW); None in the pair keeps that input
    dimension."""

    def __init__(self, output_size):
        super().__init__()
        sizes = output_size if isinstance(output_size, (tuple, list)) else (output_size,)
        if len(sizes) not in (1, 2) or not all(s is None or (is_int(s) and s >= 1) for s in sizes):
            raise ValueError(
                f"output_size must be a positive int or a pair of positive ints "
                f"(or None), got {output_size!r}"
            )
        self.output_size = output_size

    def forward(self, x):
        y = F.adaptive_avg_pool2d(x, self._size(x))
        self._ctx = x.shape
        return y

    def _forward_tensor(self, x):
        shape = x.shape
        y = F.adaptive_avg_pool2d(x.data, self._size(x))
        return _record(y, (x,), lambda g: (F.adaptive_avg_pool2d_backward(g, shape),))

    def _size(self, x):
        """``output_size`` with each None replaced by the input's size."""
        size = self.output_size
        if isinstance(size, (tuple, list)) and None in size and getattr(x, "ndim", 0) == 4:
            size = tuple(x.shape[2 + i] if s is None else s for i, s in enumerate(size))
        return size

    def backward(self, grad_out):
        return F.adaptive_avg_pool2d_backward(grad_out, self._saved())

    def extra_repr(self):
        return f"output_size={self.output_size}"
