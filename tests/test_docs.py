"""The pages in docs/ run: every fenced ```python block, plus the worked examples as tests.

Each page's blocks run in order in one namespace, so a page can build on its earlier blocks.
A block whose first line is ``# requires: torch`` runs only when PyTorch is installed; such a
block may read the page's names but must not define any that later blocks use, so the page
still runs without it. A page with skipped blocks runs everything else, then reports a skip.

The worked examples of issue 14 are also plain tests below (the batch-norm and hand-set
convolution of the tutorials, the hand-derived network gradients of ``network_by_hand.md``),
so they are checked even if a page is rewritten.
"""

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

import fastconv
from fastconv import nn

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = sorted(p for p in DOCS.glob("*.md") if p.name != "API.md")  # API.md: the contract
HAS_TORCH = importlib.util.find_spec("torch") is not None

# A fence opens with ```python at the start of a line and closes with ``` alone on a line.
_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def python_blocks(path):
    """(first line number, source) of every ```python block of a Markdown page."""
    text = path.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in _BLOCK.finditer(text)]


# The pages of issue 14, in reading order; docs/README.md is their index.
READING_ORDER = [
    "conv_forward.md",
    "conv_backward.md",
    "pooling.md",
    "batch_norm.md",
    "network_by_hand.md",
    "why_fast.md",
]


def test_pages_exist():
    names = {p.name for p in PAGES}
    missing = {"README.md", *READING_ORDER} - names
    assert not missing, missing


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_page_blocks_run(page):
    blocks = python_blocks(page)
    namespace = {"__name__": f"docs.{page.stem}"}
    skipped = 0
    for line, source in blocks:
        if source.lstrip().startswith("# requires: torch") and not HAS_TORCH:
            skipped += 1
            continue
        # Compiled with the page's name and line so a traceback points into the Markdown.
        code = compile("\n" * (line - 1) + source, str(page), "exec")
        exec(code, namespace)  # noqa: S102 - the docs' own code, the point of the test
    if skipped:
        pytest.skip(f"{skipped} block(s) need torch (not installed); the other blocks passed")


def test_index_links_every_page_in_order():
    """docs/README.md links every page, in reading order, and every page it links exists."""
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#:\s]+\.md)(?:#[^)]*)?\)", index)
    for link in links:
        assert (DOCS / link).exists(), f"docs/README.md links a missing page: {link}"
    pages = [p.name for p in PAGES if p.name != "README.md"]
    unlisted = set(pages) - set(links)
    assert not unlisted, f"docs/README.md does not link {sorted(unlisted)}"
    first_seen = list(dict.fromkeys(link for link in links if link in READING_ORDER))
    assert first_seen == READING_ORDER


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_page_links_resolve(page):
    """Relative links between pages (and to repository files) point at files that exist."""
    text = page.read_text(encoding="utf-8")
    for link in re.findall(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)", text):
        assert (page.parent / link).resolve().exists(), f"{page.name} links a missing {link}"


# ---------------------------------------------------------------------------------------------
# The tutorials' worked examples (issue 14)


def tutorial_input():
    """(1, 3, 5, 5): an NHWC (1, 5, 5, 3) picture permuted to NCHW. In every channel row r
    (1..5) holds r, except channel 0's second column, which holds 10 r."""
    nhwc = np.repeat(np.arange(1, 6, dtype=np.float32)[:, None, None], 5, axis=1)
    nhwc = np.repeat(nhwc, 3, axis=2)[None]  # (1, 5, 5, 3), value r in row r
    nhwc[0, :, 1, 0] *= 10
    return np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2))


def test_tutorial_input_layout():
    x = tutorial_input()
    assert x.shape == (1, 3, 5, 5)
    assert x[0, 0, 4].tolist() == [5, 50, 5, 5, 5]
    assert x[0, 1, 4].tolist() == [5, 5, 5, 5, 5]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tutorial_batch_norm(dtype):
    x = tutorial_input().astype(dtype)
    bn = nn.BatchNorm2d(3, dtype=dtype)  # weight 1, bias 0, training mode
    y = bn(x)
    assert round(float(y[0, 0, 0, 0]), 4) == -0.5883
    assert round(float(y[0, 0, 4, 1]), 4) == 3.3070
    np.testing.assert_allclose(y[0, 1, :, 0], [-1.4142, -0.7071, 0, 0.7071, 1.4142], atol=1e-4)
    # The same numbers from the formula with the biased variance (divide by m, not m - 1).
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = x.var(axis=(0, 2, 3), keepdims=True)  # ddof=0: biased
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-5, atol=1e-5)
    # The running variance is updated with the unbiased one: (1 - 0.1) * 1 + 0.1 * var * m/(m-1)
    m = 25
    expected = 0.9 + 0.1 * x.var(axis=(0, 2, 3), ddof=1)
    np.testing.assert_allclose(bn.running_var, expected, rtol=1e-6)
    assert not np.allclose(bn.running_var, 0.9 + 0.1 * var.ravel() * 1.0)  # biased would differ
    assert m == x.size // 3


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tutorial_hand_set_convolution(dtype):
    x = tutorial_input().astype(dtype)
    conv = nn.Conv2d(3, 1, 3, dtype=dtype)
    conv.weight.data[...] = 1
    conv.bias.data[...] = 1
    expected = [[109, 109, 55], [163, 163, 82], [217, 217, 109]]
    np.testing.assert_allclose(conv(x)[0, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(fastconv.reference.conv2d(x, conv.weight.data, conv.bias.data)[0, 0],
                               expected, rtol=1e-6)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The network of docs/network_by_hand.md: conv (4x3 input, 2x3 kernel) -> ReLU -> max-pool ->
# linear -> softmax cross-entropy, differentiated by hand.

X = np.array([[1.0, 0.0, 2.0], [-1.0, 3.0, 1.0], [2.0, 1.0, -2.0], [0.0, 1.0, 1.0]])
U = np.array([[0.5, -1.0, 0.25], [1.0, 0.5, -0.5]])
V = np.array([[1.0], [-1.0]])  # linear layer: 1 pooled value -> 2 logits
TARGET = 0


def hand_forward_backward(x, u, v, target):
    """Loss and (dL/du, dL/dv, dL/dx), derived with the chain rule (see the page)."""
    s = np.array([np.sum(x[i : i + 2] * u) for i in range(3)])  # conv: (3,), one per row offset
    p = np.maximum(s, 0)  # ReLU
    k = int(np.argmax(p))  # max pooling over the 3 values
    m = p[k]
    z = v[:, 0] * m  # logits (2,)
    q = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    loss = -np.log(q[target])
    dz = q - np.eye(2)[target]  # softmax cross-entropy
    dv = (dz * m)[:, None]
    dm = dz @ v[:, 0]
    dp = np.zeros(3)
    dp[k] = dm  # max: only the winner
    ds = dp * (s > 0)  # ReLU: pass where positive
    du = sum(ds[i] * x[i : i + 2] for i in range(3))  # correlation of x with ds
    dx = np.zeros_like(x)
    for i in range(3):
        dx[i : i + 2] += ds[i] * u  # each window gets ds times the kernel
    return loss, du, dv, dx


def layers_forward_backward(x, u, v, target):
    conv = nn.Conv2d(1, 1, (2, 3), bias=False, dtype=np.float64)
    conv.weight.data[...] = u
    fc = nn.Linear(1, 2, bias=False, dtype=np.float64)
    fc.weight.data[...] = v
    net = nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d((3, 1)), nn.Flatten(), fc)
    crit = nn.CrossEntropyLoss()
    loss = crit(net(x[None, None]), np.array([target]))
    grad_x = net.backward(crit.backward())
    return loss, conv.weight.grad[0, 0], fc.weight.grad, grad_x[0, 0]


def test_network_by_hand_matches_layers():
    loss, du, dv, dx = hand_forward_backward(X, U, V, TARGET)
    loss2, du2, dv2, dx2 = layers_forward_backward(X, U, V, TARGET)
    assert loss == pytest.approx(loss2, rel=1e-12)
    np.testing.assert_allclose(du, du2, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(dv, dv2, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(dx, dx2, rtol=1e-12, atol=1e-15)
    assert np.abs(du).sum() > 0 and np.abs(dx).sum() > 0  # the example is not degenerate


def test_network_by_hand_matches_finite_differences():
    _, *grads = hand_forward_backward(X, U, V, TARGET)
    inputs = {"u": U, "v": V, "x": X}
    for (name, value), grad in zip(inputs.items(), grads, strict=True):
        numeric = np.zeros_like(value)
        for i in np.ndindex(value.shape):
            for sign in (1, -1):
                moved = {k: a.copy() for k, a in inputs.items()}
                moved[name][i] += sign * 1e-6
                numeric[i] += sign * hand_forward_backward(**moved, target=TARGET)[0] / 2e-6
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8, err_msg=name)
