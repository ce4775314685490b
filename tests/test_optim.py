"""fastconv.optim against torch.optim: same parameters, same gradients, same updates."""

import tracemalloc

import numpy as np
import pytest

from fastconv.optim import SGD, Adam, AdamW, Optimizer
from fastconv.optim.lr_scheduler import CosineAnnealingLR, StepLR

try:
    from fastconv.nn import Parameter
except ImportError:  # nn not written yet: the optimizers only need .data and .grad

    class Parameter:
        def __init__(self, data):
            self.data = data
            self.grad = None


SHAPES = [(4, 3, 3, 3), (4,), (5, 7)]
STEPS = 5

# float64 agrees to rounding; float32 differs by an ulp or so where torch fuses a multiply-add
# that NumPy rounds twice, hence the absolute tolerance (values are O(1)).
TOLERANCES = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=1e-6, atol=1e-6)}

CASES = {
    "sgd": (SGD, dict(lr=0.1)),
    "sgd-momentum": (SGD, dict(lr=0.1, momentum=0.9)),
    "sgd-dampening": (SGD, dict(lr=0.1, momentum=0.9, dampening=0.3)),
    "sgd-nesterov": (SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    "sgd-wd": (SGD, dict(lr=0.1, weight_decay=0.05)),
    "sgd-momentum-wd": (SGD, dict(lr=0.05, momentum=0.8, weight_decay=0.1)),
    "sgd-dampening-wd": (SGD, dict(lr=0.05, momentum=0.8, dampening=0.5, weight_decay=0.1)),
    "sgd-nesterov-wd": (SGD, dict(lr=0.05, momentum=0.8, weight_decay=0.1, nesterov=True)),
    "adam": (Adam, dict()),
    "adam-lr-betas": (Adam, dict(lr=0.01, betas=(0.8, 0.99))),
    "adam-small-beta1": (Adam, dict(lr=0.01, betas=(0.3, 0.9))),  # torch's other lerp form
    "adam-eps": (Adam, dict(lr=0.01, eps=1e-2)),
    "adam-wd": (Adam, dict(lr=0.01, weight_decay=0.1)),
    "adamw": (AdamW, dict()),
    "adamw-lr-wd": (AdamW, dict(lr=0.01, weight_decay=0.3, betas=(0.85, 0.95))),
    "adamw-no-wd": (AdamW, dict(lr=0.01, weight_decay=0)),
}


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def make_problem(dtype, seed=0):
    """Initial arrays and per-step gradients; parameter 1 gets no gradient at step 2."""
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(shape).astype(dtype) for shape in SHAPES]
    grads = [[rng.standard_normal(shape).astype(dtype) for shape in SHAPES] for _ in range(STEPS)]
    grads[2][1] = None
    return init, grads


def run_fastconv(cls, kwargs, init, grads):
    params = [Parameter(a.copy()) for a in init]
    arrays = [p.data for p in params]
    optimizer = cls((p for p in params), **kwargs)  # a generator, like model.parameters()
    for step_grads in grads:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = None if g is None else g.copy()
        optimizer.step()
    for p, array in zip(params, arrays, strict=True):
        assert p.data is array, "step() must update p.data in place"
    return params, optimizer


def run_torch(torch, cls, kwargs, init, grads):
    tensors = [torch.tensor(a.copy(), requires_grad=True) for a in init]
    optimizer = getattr(torch.optim, cls.__name__)(tensors, **kwargs)
    for step_grads in grads:
        for t, g in zip(tensors, step_grads, strict=True):
            t.grad = None if g is None else torch.tensor(g)
        optimizer.step()
    return [t.detach().numpy() for t in tensors]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES)
def test_matches_torch(torch, case, dtype):
    cls, kwargs = CASES[case]
    init, grads = make_problem(dtype)
    params, optimizer = run_fastconv(cls, kwargs, init, grads)
    expected = run_torch(torch, cls, kwargs, init, grads)
    for p, want in zip(params, expected, strict=True):
        assert p.data.dtype == dtype
        np.testing.assert_allclose(p.data, want, **TOLERANCES[dtype])
    for entries in optimizer.state.values():
        for value in entries.values():
            if isinstance(value, np.ndarray):
                assert value.dtype == dtype, "state must stay in the parameter's dtype"


def test_param_groups_match_torch(torch):
    init, grads = make_problem(np.float64)
    params = [Parameter(a.copy()) for a in init]
    ours = SGD(
        [{"params": params[:2]}, {"params": params[2:], "lr": 0.01, "nesterov": True}],
        lr=0.1,
        momentum=0.9,
    )
    tensors = [torch.tensor(a.copy(), requires_grad=True) for a in init]
    theirs = torch.optim.SGD(
        [{"params": tensors[:2]}, {"params": tensors[2:], "lr": 0.01, "nesterov": True}],
        lr=0.1,
        momentum=0.9,
    )
    for step_grads in grads:
        for p, t, g in zip(params, tensors, step_grads, strict=True):
            p.grad = None if g is None else g.copy()
            t.grad = None if g is None else torch.tensor(g)
        ours.step()
        theirs.step()
    for p, t in zip(params, tensors, strict=True):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-12)


def test_skips_parameters_without_grad():
    p = Parameter(np.ones(3))
    optimizer = Adam([p], lr=0.1)
    optimizer.step()
    np.testing.assert_array_equal(p.data, np.ones(3))
    assert not [key for key in optimizer.state_dict() if key.startswith("state.")]


def test_zero_grad():
    p = Parameter(np.ones(3, dtype=np.float32))
    optimizer = SGD([p], lr=0.1)
    p.grad = np.ones(3, dtype=np.float32)
    grad = p.grad
    optimizer.zero_grad(set_to_none=False)
    assert p.grad is grad
    np.testing.assert_array_equal(grad, 0)
    optimizer.zero_grad()
    assert p.grad is None


def test_lr_attribute_and_param_groups():
    optimizer = SGD([Parameter(np.zeros(2))], lr=0.1)
    assert optimizer.lr == 0.1
    assert optimizer.param_groups[0]["lr"] == 0.1
    optimizer.lr = 0.5
    assert optimizer.param_groups[0]["lr"] == 0.5
    with pytest.raises(ValueError, match="lr"):
        optimizer.lr = -1.0


@pytest.mark.parametrize(
    "cls, kwargs, error, name",
    [
        (SGD, dict(lr=-0.1), ValueError, "lr"),
        (SGD, dict(lr=float("nan")), ValueError, "lr"),
        (SGD, dict(lr="0.1"), TypeError, "lr"),
        (SGD, dict(lr=0.1, momentum=-0.5), ValueError, "momentum"),
        (SGD, dict(lr=0.1, weight_decay=-1), ValueError, "weight_decay"),
        (SGD, dict(lr=0.1, nesterov=True), ValueError, "nesterov"),
        (SGD, dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), ValueError, "dampening"),
        (SGD, dict(lr=0.1, nesterov=1), TypeError, "nesterov"),
        (Adam, dict(lr=-1e-3), ValueError, "lr"),
        (Adam, dict(betas=(1.0, 0.999)), ValueError, r"betas\[0\]"),
        (Adam, dict(betas=(0.9, -0.1)), ValueError, r"betas\[1\]"),
        (Adam, dict(betas=0.9), TypeError, "betas"),
        (Adam, dict(eps=-1e-8), ValueError, "eps"),
        (Adam, dict(weight_decay=-0.1), ValueError, "weight_decay"),
        (AdamW, dict(weight_decay=-0.1), ValueError, "weight_decay"),
        (AdamW, dict(betas=(0.9, 1.5)), ValueError, r"betas\[1\]"),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else None,
)
def test_invalid_options(cls, kwargs, error, name):
    with pytest.raises(error, match=name):
        cls([Parameter(np.zeros(2))], **kwargs)


def test_invalid_params():
    with pytest.raises(ValueError, match="empty parameter list"):
        SGD([], lr=0.1)
    with pytest.raises(ValueError, match="empty parameter list"):
        Adam(iter([]))
    with pytest.raises(TypeError, match="params"):
        SGD(Parameter(np.zeros(2)), lr=0.1)
    with pytest.raises(TypeError, match="params"):
        SGD(np.zeros((2, 2)), lr=0.1)
    with pytest.raises(TypeError, match=r"params\[0\].data must be float32 or float64"):
        SGD([Parameter(np.zeros(2, dtype=np.int64))], lr=0.1)
    p = Parameter(np.zeros(2))
    with pytest.raises(ValueError, match="more than once"):
        SGD([p, p], lr=0.1)
    with pytest.raises(ValueError, match="unknown option"):
        SGD([{"params": [p], "momentun": 0.9}], lr=0.1)


def test_bad_gradients():
    p, q = Parameter(np.zeros(2, dtype=np.float32)), Parameter(np.zeros(3, dtype=np.float32))
    optimizer = SGD([p, q], lr=0.1)
    q.grad = np.zeros(3)
    with pytest.raises(TypeError, match=r"params\[1\].grad has dtype float64"):
        optimizer.step()
    q.grad = np.zeros(2, dtype=np.float32)
    with pytest.raises(ValueError, match=r"params\[1\].grad has shape \(2,\)"):
        optimizer.step()


@pytest.mark.parametrize("case", ["sgd-nesterov-wd", "sgd-dampening-wd", "adam-wd", "adamw"])
def test_steps_do_not_allocate(case):
    """After the first step (which creates the state), updates reuse preallocated arrays."""
    cls, kwargs = CASES[case]
    params = [Parameter(np.ones((64, 32, 3, 3), dtype=np.float32)), Parameter(np.ones(64))]
    for p in params:
        p.grad = np.ones_like(p.data)
    optimizer = cls(params, **kwargs)
    optimizer.step()
    tracemalloc.start()
    try:
        optimizer.step()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < params[0].data.nbytes // 10


def test_closure():
    p = Parameter(np.ones(2))
    p.grad = np.ones(2)
    assert SGD([p], lr=1.0).step(lambda: 3.5) == 3.5
    np.testing.assert_array_equal(p.data, 0)


@pytest.mark.parametrize("case", ["sgd-nesterov-wd", "adam-wd", "adamw"])
def test_state_dict_round_trip_through_npz(case, tmp_path):
    """Three steps, save, load into a fresh optimizer on copied params, two more steps."""
    cls, kwargs = CASES[case]
    init, grads = make_problem(np.float32)
    first, saved = run_fastconv(cls, kwargs, init, grads[:3])
    state = saved.state_dict()
    for value in state.values():
        assert isinstance(value, (np.ndarray, int, float, bool))
    np.savez(tmp_path / "opt.npz", **state)

    resumed_params = [Parameter(p.data.copy()) for p in first]
    resumed = cls(resumed_params, **{**kwargs, "lr": 123.0})  # lr comes from the file
    with np.load(tmp_path / "opt.npz", allow_pickle=False) as f:
        resumed.load_state_dict(f)
    assert resumed.lr == saved.lr

    for optimizer, params in [(saved, first), (resumed, resumed_params)]:
        for step_grads in grads[3:]:
            for p, g in zip(params, step_grads, strict=True):
                p.grad = g.copy()
            optimizer.step()
    for a, b in zip(first, resumed_params, strict=True):
        np.testing.assert_array_equal(a.data, b.data)


def test_state_dict_is_a_snapshot():
    p = Parameter(np.zeros(2))
    optimizer = SGD([p], lr=0.1, momentum=0.9)
    p.grad = np.ones(2)
    optimizer.step()
    state = optimizer.state_dict()
    optimizer.step()
    np.testing.assert_array_equal(state["state.0.momentum_buffer"], 1)


def test_load_state_dict_errors():
    def fresh():
        p = Parameter(np.zeros((2, 3)))
        p.grad = np.ones((2, 3))
        optimizer = Adam([p])
        optimizer.step()
        return optimizer

    good = fresh().state_dict()
    cases = [
        ({k: v for k, v in good.items() if k != "state.0.exp_avg"}, "state.0.exp_avg"),
        ({k: v for k, v in good.items() if k != "param_groups.0.eps"}, "param_groups.0.eps"),
        ({**good, "state.0.exp_avg": np.zeros(6)}, "state.0.exp_avg"),
        ({**good, "state.1.exp_avg": np.zeros((2, 3))}, "state.1.exp_avg"),
        ({**good, "state.0.momentum_buffer": np.zeros((2, 3))}, "state.0.momentum_buffer"),
        ({**good, "param_groups.0.params": np.arange(2)}, "param_groups.0.params"),
        ({**good, "param_groups.0.lr": -1.0}, "lr"),
    ]
    for bad, name in cases:
        optimizer = fresh()
        before = optimizer.state_dict()
        with pytest.raises(ValueError, match=name):
            optimizer.load_state_dict(bad)
        after = optimizer.state_dict()
        assert before.keys() == after.keys()
        for key in before:
            np.testing.assert_array_equal(before[key], after[key], err_msg=key)


def test_optimizer_base_is_abstract():
    p = Parameter(np.zeros(2))
    p.grad = np.ones(2)
    with pytest.raises(NotImplementedError):
        Optimizer([p], {"lr": 0.1}).step()


# ---------------------------------------------------------------------------------------------
# Schedulers
# ---------------------------------------------------------------------------------------------

SCHEDULERS = {
    "step": (StepLR, dict(step_size=7, gamma=0.5)),
    "step-default-gamma": (StepLR, dict(step_size=3)),
    "cosine": (CosineAnnealingLR, dict(T_max=10)),
    "cosine-eta-min": (CosineAnnealingLR, dict(T_max=8, eta_min=1e-3)),
}


@pytest.mark.parametrize("case", SCHEDULERS)
def test_scheduler_matches_torch(torch, case):
    cls, kwargs = SCHEDULERS[case]
    lrs = (0.1, 0.03)
    params = [Parameter(np.zeros(2)), Parameter(np.zeros(2))]
    optimizer = SGD([{"params": [p], "lr": lr} for p, lr in zip(params, lrs, strict=True)], lr=1.0)
    ours = cls(optimizer, **kwargs)
    tensors = [torch.zeros(2, requires_grad=True) for _ in lrs]
    torch_optimizer = torch.optim.SGD(
        [{"params": [t], "lr": lr} for t, lr in zip(tensors, lrs, strict=True)], lr=1.0
    )
    theirs = getattr(torch.optim.lr_scheduler, cls.__name__)(torch_optimizer, **kwargs)
    assert ours.get_last_lr() == theirs.get_last_lr()
    for _ in range(35):  # several decays / past T_max, where the cosine rises again
        torch_optimizer.step()
        ours.step()
        theirs.step()
        np.testing.assert_allclose(ours.get_last_lr(), theirs.get_last_lr(), rtol=1e-12)
        np.testing.assert_allclose(
            [group["lr"] for group in optimizer.param_groups], theirs.get_last_lr(), rtol=1e-12
        )
    assert ours.last_epoch == theirs.last_epoch == 35


@pytest.mark.parametrize("case", SCHEDULERS)
def test_scheduler_state_dict_round_trip(case, tmp_path):
    cls, kwargs = SCHEDULERS[case]
    optimizer = SGD([Parameter(np.zeros(2))], lr=0.1)
    scheduler = cls(optimizer, **kwargs)
    for _ in range(5):
        scheduler.step()
    np.savez(tmp_path / "sched.npz", **scheduler.state_dict())

    resumed_optimizer = SGD([Parameter(np.zeros(2))], lr=0.1)
    resumed = cls(resumed_optimizer, **{**kwargs, list(kwargs)[0]: 1})  # settings from the file
    with np.load(tmp_path / "sched.npz", allow_pickle=False) as f:
        resumed.load_state_dict(f)
    assert resumed.get_last_lr() == scheduler.get_last_lr()
    for _ in range(10):
        scheduler.step()
        resumed.step()
        assert resumed.get_last_lr() == scheduler.get_last_lr()


def test_scheduler_errors():
    optimizer = SGD([Parameter(np.zeros(2))], lr=0.1)
    with pytest.raises(TypeError, match="optimizer"):
        StepLR(object(), step_size=2)
    with pytest.raises(ValueError, match="step_size"):
        StepLR(optimizer, step_size=0)
    with pytest.raises(TypeError, match="step_size"):
        StepLR(optimizer, step_size=2.5)
    with pytest.raises(ValueError, match="gamma"):
        StepLR(optimizer, step_size=2, gamma=-0.1)
    with pytest.raises(ValueError, match="T_max"):
        CosineAnnealingLR(optimizer, T_max=0)
    with pytest.raises(ValueError, match="eta_min"):
        CosineAnnealingLR(optimizer, T_max=5, eta_min=-1.0)
    scheduler = StepLR(optimizer, step_size=2)
    good = scheduler.state_dict()
    with pytest.raises(ValueError, match="gamma"):
        scheduler.load_state_dict({k: v for k, v in good.items() if k != "gamma"})
    with pytest.raises(ValueError, match="T_max"):
        scheduler.load_state_dict({**good, "T_max": 3})
    with pytest.raises(ValueError, match="base_lrs"):
        scheduler.load_state_dict({**good, "base_lrs": np.array([0.1, 0.2])})


@pytest.mark.parametrize("case", list(CASES))
def test_update_of_arrays_not_c_contiguous(case):
    """SGD and Adam update a C-contiguous parameter in one fused pass (``kernels/optim.py``)
    and any other (a user's own Fortran-ordered array) with NumPy operations: the same steps."""
    cls, kwargs = CASES[case]
    init, grads = make_problem(np.float64)
    fused, _ = run_fastconv(cls, kwargs, init, grads)
    params = [Parameter(np.asfortranarray(a)) for a in init]
    assert not params[0].data.flags.c_contiguous
    optimizer = cls(params, **kwargs)
    for step_grads in grads:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = None if g is None else g.copy()
        optimizer.step()
    for p, q in zip(params, fused, strict=True):
        np.testing.assert_allclose(p.data, q.data, **TOLERANCES[np.float64])
