"""ONNX export of fastconv models (needs the ``onnx`` package: ``pip install fastconv[onnx]``,
which brings ``onnxruntime`` too)::

    import fastconv, fastconv.onnx
    model = fastconv.models.build("resnet")
    fastconv.load(model, "runs/resnet/checkpoint.npz")
    fastconv.onnx.export(model, images[:1], "resnet.onnx")  # images: (N, 1, 28, 28) float32

    import onnxruntime
    session = onnxruntime.InferenceSession("resnet.onnx")
    logits = session.run(None, {"input": images})[0]  # any batch size

``import fastconv`` does not import this module, so fastconv works without ``onnx``.
"""

try:
    import onnx  # noqa: F401 - the check that the extra is installed
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "fastconv.onnx needs the onnx package; install it with `pip install fastconv[onnx]` "
        "(onnx and onnxruntime)"
    ) from e

from fastconv.onnx._export import default_opset, export

__all__ = ["export", "default_opset"]
