"""fastconv.Tensor: finite-difference gradient checks of every operation (float64, broadcasting
both ways), PyTorch's semantics for results, and the errors."""

from __future__ import annotations

import weakref

import numpy as np
import pytest

import fastconv
from fastconv import Tensor, gradcheck


def check(f, *arrays):
    """gradcheck of ``f`` (Tensors -> Tensor) through ``Tensor.backward`` at each array."""

    def fn(*xs):
        ts = [Tensor(x, requires_grad=True) for x in xs]
        out = f(*ts)

        def backward(g):
            out.backward(g)
            return [t.grad for t in ts]

        return out.data, backward

    assert gradcheck(fn, list(arrays), atol=1e-7, rtol=1e-6)


def randn(rng, *shape):
    return rng.standard_normal(shape)


def positive(rng, *shape):
    return rng.uniform(0.5, 2.0, shape)


BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
}
SHAPES = {  # broadcasting both ways: a to b, b to a, both
    "same": ((2, 3), (2, 3)),
    "b_row": ((2, 3), (3,)),
    "a_col": ((2, 1), (2, 3)),
    "both": ((4, 1, 3), (2, 1)),
    "scalar_tensor": ((), (2, 3)),
}


@pytest.mark.parametrize("shapes", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("op", BINARY.values(), ids=BINARY.keys())
def test_binary_ops_broadcast_gradcheck(op, shapes, rng):
    a, b = randn(rng, *shapes[0]), positive(rng, *shapes[1])
    check(op, a, b)
    out = op(Tensor(a), Tensor(b))
    np.testing.assert_array_equal(out.data, op(a, b))


@pytest.mark.parametrize(
    "f",
    [
        lambda x: x + 2.5,
        lambda x: 2.5 - x,
        lambda x: 3 * x,
        lambda x: x * np.float64(0.5),
        lambda x: 1.5 / x,
        lambda x: x / 4,
        lambda x: -x,
        lambda x: x**2,
        lambda x: x**0.5,
        lambda x: x**-1.5,
        lambda x: np.ones((2, 1)) + x,  # an ndarray on the left defers to the Tensor
        lambda x: x * np.arange(3.0),
    ],
    ids=["add", "rsub", "rmul", "mul_np_scalar", "rdiv", "div", "neg", "sq", "sqrt", "pow_neg",
         "ndarray_left", "ndarray_right"],
)  # fmt: skip
def test_scalar_and_array_operands_gradcheck(f, rng):
    check(f, positive(rng, 2, 3))


MATMUL = {  # torch.matmul's cases
    "1d_1d": ((4,), (4,)),
    "2d_2d": ((3, 4), (4, 5)),
    "1d_2d": ((4,), (4, 5)),
    "2d_1d": ((3, 4), (4,)),
    "batched": ((2, 3, 4), (2, 4, 5)),
    "broadcast_b": ((2, 3, 4), (4, 5)),
    "broadcast_a": ((3, 4), (2, 4, 5)),
    "broadcast_both": ((2, 1, 3, 4), (5, 4, 2)),
    "1d_batched": ((4,), (2, 4, 5)),
    "batched_1d": ((2, 3, 4), (4,)),
}


@pytest.mark.parametrize("shapes", MATMUL.values(), ids=MATMUL.keys())
def test_matmul_like_torch_gradcheck(shapes, rng):
    a, b = randn(rng, *shapes[0]), randn(rng, *shapes[1])
    check(lambda x, y: x @ y, a, b)
    np.testing.assert_allclose((Tensor(a) @ Tensor(b)).data, np.matmul(a, b))
    check(lambda x: a @ x, b)  # __rmatmul__


REDUCE = {
    "sum_all": lambda x: x.sum(),
    "sum_dim": lambda x: x.sum(1),
    "sum_neg_keep": lambda x: x.sum(dim=-1, keepdim=True),
    "sum_dims": lambda x: x.sum(dim=(0, 2)),
    "mean_all": lambda x: x.mean(),
    "mean_dim": lambda x: x.mean(0),
    "mean_keep": lambda x: x.mean(dim=(1, 2), keepdim=True),
}


@pytest.mark.parametrize("f", REDUCE.values(), ids=REDUCE.keys())
def test_reductions_gradcheck(f, rng):
    check(f, randn(rng, 2, 3, 4))


SHAPE_OPS = {
    "reshape": lambda x: x.reshape(4, 6) * np.arange(6.0),
    "reshape_tuple": lambda x: x.reshape((6, -1)),
    "view": lambda x: x.view(2, 12),
    "flatten": lambda x: x.flatten(),
    "flatten_1": lambda x: x.flatten(1),
    "flatten_mid": lambda x: x.flatten(0, 1),
    "transpose": lambda x: x.transpose(0, 2) * np.arange(2.0),
    "permute": lambda x: x.permute(2, 0, 1) * np.arange(3.0),
    "index_int": lambda x: x[1],
    "index_slice": lambda x: x[:, 1:3, ::2],
    "index_neg_ellipsis": lambda x: x[..., -1],
    "index_none": lambda x: x[None, 0, :, 1],
    "index_array_repeats": lambda x: x[np.array([0, 1, 0])],
    "index_bool": lambda x: x[np.array([True, False])],
    "index_tensor": lambda x: x[Tensor(np.array([1, 1, 0])), 1:],
    "index_mixed": lambda x: x[:, np.array([0, 2, 0]), 1],
}


@pytest.mark.parametrize("f", SHAPE_OPS.values(), ids=SHAPE_OPS.keys())
def test_shape_and_indexing_gradcheck(f, rng):
    check(f, randn(rng, 2, 3, 4))


def test_indexing_and_shapes_match_numpy(rng):
    a = randn(rng, 2, 3, 4)
    t = Tensor(a)
    np.testing.assert_array_equal(t[:, np.array([0, 2, 0]), 1].data, a[:, [0, 2, 0], 1])
    assert t[1, 2, 3].shape == () and t[1, 2, 3].item() == a[1, 2, 3]
    assert t.flatten(1).shape == (2, 12) and t.permute(2, 0, 1).shape == (4, 2, 3)
    assert t.transpose(-1, 0).shape == (4, 3, 2) and t.view(-1).shape == (24,)


ELEMENTWISE = {
    "exp": (lambda x: x.exp(), randn),
    "log": (lambda x: x.log(), positive),
    "relu": (lambda x: x.relu(), randn),
    "sigmoid": (lambda x: x.sigmoid(), randn),
    "tanh": (lambda x: x.tanh(), randn),
    "softmax_last": (lambda x: x.softmax(-1), randn),
    "softmax_0": (lambda x: x.softmax(0), randn),
    "log_softmax": (lambda x: x.log_softmax(1), randn),
    "log_softmax_0": (lambda x: x.log_softmax(dim=0), randn),
}


@pytest.mark.parametrize("f, make", ELEMENTWISE.values(), ids=ELEMENTWISE.keys())
def test_elementwise_gradcheck(f, make, rng):
    x = make(rng, 3, 4)
    if f is ELEMENTWISE["relu"][0]:
        x[np.abs(x) < 1e-3] = 0.5  # no kink within the finite-difference step
    check(f, x)


def test_elementwise_values_match_torch(rng):
    torch = pytest.importorskip("torch")
    x = randn(rng, 3, 4)
    t, tt = Tensor(x), torch.from_numpy(x)
    for name in ("exp", "relu", "sigmoid", "tanh"):
        np.testing.assert_allclose(getattr(t, name)().data, getattr(tt, name)().numpy())
    for name in ("softmax", "log_softmax"):
        np.testing.assert_allclose(getattr(t, name)(0).data, getattr(tt, name)(0).numpy())


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_cat_and_stack_gradcheck(dim, rng):
    a, b, c = randn(rng, 2, 3), randn(rng, 2, 3), randn(rng, 2, 3)
    w = randn(rng, 2, 9) if dim else randn(rng, 6, 3)
    check(lambda x, y, z: fastconv.cat([x, y, z], dim=dim) * (w if dim else w), a, b, c)
    check(lambda x, y, z: fastconv.stack((x, y, z), dim) * 2.0, a, b, c)
    np.testing.assert_array_equal(
        fastconv.stack([Tensor(a), Tensor(b)], dim).data, np.stack([a, b], dim)
    )


def test_a_tensor_used_twice_accumulates_and_leaves_accumulate_across_backwards(rng):
    x = Tensor(randn(rng, 3), requires_grad=True)
    y = x * x + x  # x reaches the output three times
    y.sum().backward()
    np.testing.assert_allclose(x.grad, 2 * x.data + 1)
    (x * 3).sum().backward()  # gradients add up until cleared, as in PyTorch
    np.testing.assert_allclose(x.grad, 2 * x.data + 4)


def test_a_sum_hands_one_array_to_two_leaves_without_aliasing(rng):
    a = Tensor(randn(rng, 3), requires_grad=True)
    b = Tensor(randn(rng, 3), requires_grad=True)
    (a + b).backward(np.ones(3))
    assert a.grad is not b.grad and not np.shares_memory(a.grad, b.grad)
    a.grad += 1  # an optimizer writing into one leaves the other alone
    np.testing.assert_array_equal(b.grad, np.ones(3))


def test_gradient_argument_and_scalar_results(rng):
    x = Tensor(randn(rng, 2, 3), requires_grad=True)
    g = randn(rng, 2, 3)
    (x * 2).backward(Tensor(g))
    np.testing.assert_allclose(x.grad, 2 * g)
    loss = (x * x).mean()
    assert loss.shape == () and loss.ndim == 0 and isinstance(loss.item(), float)
    assert float(loss) == loss.item()
    assert weakref.ref(loss)() is loss


def test_no_grad_records_nothing(rng):
    x = Tensor(randn(rng, 3), requires_grad=True)
    assert fastconv.is_grad_enabled()
    with fastconv.no_grad():
        assert not fastconv.is_grad_enabled()
        y = (x * 2).exp()
    assert fastconv.is_grad_enabled()
    assert not y.requires_grad and y.is_leaf
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.sum().backward()

    @fastconv.no_grad()
    def f(t):
        return t * 2

    assert not f(x).requires_grad and (x * 2).requires_grad


def test_detach_numpy_and_leaves(rng):
    a = randn(rng, 3)
    x = Tensor(a, requires_grad=True)
    assert x.numpy() is a and x.is_leaf and x.shape == (3,) and x.dtype == np.float64
    y = x * 2
    assert not y.is_leaf and y.requires_grad
    d = y.detach()
    assert d.is_leaf and not d.requires_grad and np.shares_memory(d.data, y.data)
    assert "requires_grad=True" in repr(x)


def test_second_backward_through_freed_graph_raises_unless_retained(rng):
    x = Tensor(randn(rng, 3), requires_grad=True)
    loss = (x.exp() * x).sum()
    loss.backward()
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        loss.backward()
    x.grad = None
    loss = (x.exp() * x).sum()
    loss.backward(retain_graph=True)
    loss.backward()
    np.testing.assert_allclose(x.grad, 2 * (np.exp(x.data) * (x.data + 1)))


# ---- errors, each naming the argument, never a numba error ----------------------------------


def test_mixed_float_dtypes_raise_type_error(rng):
    a = Tensor(randn(rng, 2, 3).astype(np.float32), requires_grad=True)
    b = Tensor(randn(rng, 2, 3))
    for f in (lambda: a + b, lambda: b * a, lambda: a @ b.transpose(0, 1), lambda: a - b.data):
        with pytest.raises(TypeError, match="float64.*float32|float32.*float64"):
            f()
    with pytest.raises(TypeError, match=r"tensors\[1\]"):
        fastconv.cat([a, b])
    with pytest.raises(TypeError, match="weight must have the same dtype"):
        fastconv.nn.Linear(3, 2, dtype=np.float32)(b)


def test_int_tensors_cannot_require_grad():
    with pytest.raises(TypeError, match="requires_grad=True needs a float32 or float64"):
        Tensor(np.arange(3), requires_grad=True)
    t = Tensor(np.arange(3))
    with pytest.raises(TypeError, match="requires_grad"):
        t.requires_grad = True
    with pytest.raises(TypeError, match="data must be float32, float64 or integer"):
        Tensor(np.zeros(2, np.float16))


def test_shape_errors_raise_value_error(rng):
    a, b = Tensor(randn(rng, 2, 3)), Tensor(randn(rng, 4, 3))
    with pytest.raises(ValueError, match=r"\(2, 3\) \(self\) and \(4, 3\) \(other\)"):
        a + b
    with pytest.raises(ValueError, match="do not match for @"):
        a @ b
    with pytest.raises(ValueError, match="shape"):
        a.reshape(4, 2)
    with pytest.raises(ValueError, match="dim"):
        a.sum(dim=2)
    with pytest.raises(ValueError, match="dims must be a permutation"):
        a.permute(0, 0)
    with pytest.raises(ValueError, match="except in dim 0"):
        fastconv.cat([a, Tensor(randn(rng, 2, 2))])
    with pytest.raises(ValueError, match="same shape"):
        fastconv.stack([a, b])


def test_backward_argument_errors(rng):
    x = Tensor(randn(rng, 2, 3), requires_grad=True)
    y = x * 2
    with pytest.raises(RuntimeError, match="one-element Tensor.*gradient="):
        y.backward()
    with pytest.raises(ValueError, match=r"gradient must have shape \(2, 3\)"):
        y.backward(np.ones(3))
    with pytest.raises(TypeError, match="gradient must have dtype float64"):
        y.backward(np.ones((2, 3), np.float32))
    with pytest.raises(TypeError, match="gradient must be a numpy.ndarray or a Tensor"):
        y.backward([1.0])
    with pytest.raises(TypeError, match="other must be a Tensor"):
        x + "a"
    with pytest.raises(TypeError, match="exponent"):
        x ** Tensor(np.ones(1))


def test_paths_of_different_lengths_to_one_tensor_gradcheck(rng):
    """Every consumer's gradient reaches a Tensor before it is passed on (the visiting order):
    here ``x`` and ``a`` reach the output through one, two and three operations."""

    def f(x):
        a = x.tanh()
        b = a * 2.0
        c = (b.exp() + a) * a
        return fastconv.cat([c + x, a, b.sigmoid()], 0)

    check(f, randn(rng, 2, 3))


def test_truth_value_follows_numpy():
    assert Tensor(np.array(1.0)) and not Tensor(np.array([0.0]))
    with pytest.raises(ValueError, match="ambiguous"):
        bool(Tensor(np.zeros(3)))


def test_the_package_example_runs(rng):
    import textwrap

    source = fastconv.autograd.__doc__.split("losses::")[1].split("The same model")[0]
    images = rng.standard_normal((4, 1, 6, 6)).astype(np.float32)
    scope = {"images": images, "labels": np.array([1, 2, 3, 4])}
    exec(textwrap.dedent(source), scope)
    assert all(p.grad is not None for p in scope["model"].parameters())
