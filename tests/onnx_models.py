"""Small, real ONNX CAM classifiers and model packages for tests (built with onnx.helper; no torch).

The graph is the CAM network of Zhou et al. (2016)::

    image (N, C, H, W) -> AveragePool(stride s) -> Conv1x1 (+bias) -> Relu  = F (N, F, H/s, W/s)
    logits = Gemm(Flatten(GlobalAveragePool(F)), W^T) + b                    (N, K)
    cam    = Conv1x1(F, W)  (= einsum("kf,nfhw->nkhw", W, F))               (N, K, H/s, W/s)

With the default weights, feature 0 is the (normalised) brightness, and label 1 (``PNEUMONIA``) has
weight +1 on it, so the CAM of label 1 peaks where the input image is brightest: tests put a bright
blob at a known place and check where the CAM lands on the original image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from medviewer.inference.card import (
    InputSpec,
    ModelCard,
    OperatingPoint,
    Preprocessing,
    Provenance,
    ResizeMode,
    Task,
    save_card,
    sha256_file,
)

__all__ = ["cam_model", "make_package", "card_for"]


def cam_model(height: int = 64, width: int = 64, channels: int = 1, k: int = 2, stride: int = 1,
              weights: np.ndarray | None = None, bias: np.ndarray | None = None, batch: int | str = "N",
              input_name: str = "image", logits_name: str = "logits", cam_name: str = "cam",
              opset: int = 17) -> onnx.ModelProto:
    """A checked ONNX CAM classifier; ``weights`` (k, f) default: label i has weight (2i-1)*... on feature 0."""
    f = 2
    conv_w = np.zeros((f, channels, 1, 1), np.float32)
    conv_w[0, :, 0, 0] = 1.0 / channels  # feature 0: mean brightness
    conv_w[1, :, 0, 0] = -1.0 / channels  # feature 1: darkness
    conv_b = np.zeros(f, np.float32)
    if weights is None:
        weights = np.zeros((k, f), np.float32)
        for i in range(k):
            weights[i, 0] = 1.0 if i % 2 else -1.0
            weights[i, 1] = 0.0
    if bias is None:
        bias = np.zeros(k, np.float32)
    weights = np.asarray(weights, np.float32)
    inits = [
        numpy_helper.from_array(conv_w, "conv_w"),
        numpy_helper.from_array(conv_b, "conv_b"),
        numpy_helper.from_array(weights, "fc_w"),
        numpy_helper.from_array(np.asarray(bias, np.float32), "fc_b"),
        numpy_helper.from_array(weights.reshape(k, f, 1, 1), "cam_w"),
    ]
    nodes = []
    src = input_name
    if stride > 1:
        nodes.append(helper.make_node("AveragePool", [src], ["pooled"], kernel_shape=[stride, stride],
                                      strides=[stride, stride]))
        src = "pooled"
    nodes += [
        helper.make_node("Conv", [src, "conv_w", "conv_b"], ["pre"]),
        helper.make_node("Relu", ["pre"], ["features"]),
        helper.make_node("GlobalAveragePool", ["features"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], [logits_name], transB=1),
        helper.make_node("Conv", ["features", "cam_w"], [cam_name]),
    ]
    h, w = height // stride, width // stride
    graph = helper.make_graph(
        nodes, "cam_net",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, channels, height, width])],
        [helper.make_tensor_value_info(logits_name, TensorProto.FLOAT, [batch, k]),
         helper.make_tensor_value_info(cam_name, TensorProto.FLOAT, [batch, k, h, w])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def card_for(sha256: str, *, name: str = "test-cam", height: int = 64, width: int = 64, channels: int = 1,
             labels: tuple[str, ...] = ("NORMAL", "PNEUMONIA"), task: Task = Task.MULTICLASS,
             negative_label: str | None = "NORMAL", resize: ResizeMode = ResizeMode.SQUEEZE,
             thresholds: dict[str, float] | None = None, **over) -> ModelCard:
    """A complete schema-v1 card for a test model."""
    thresholds = {"PNEUMONIA": 0.5} if thresholds is None else thresholds
    data = dict(
        name=name, version="0.0.1", description="test CAM network", intended_use="tests only",
        limitations="not a medical device", task=task, labels=list(labels), negative_label=negative_label,
        input=InputSpec(channels=channels, height=height, width=width),
        preprocessing=Preprocessing(resize=resize, mean=[0.5] * channels, std=[0.25] * channels),
        operating_points=[OperatingPoint(label=lab, threshold=t, criterion="fixed", split="none",
                                         sensitivity=0.9, specificity=0.9) for lab, t in thresholds.items()],
        training=Provenance(dataset="synthetic", citation="-", data_licence="CC0", split="none", epochs=0,
                            seed=0, command="tests/onnx_models.py"),
        license="CC0-1.0", onnx_opset=17, sha256=sha256,
    )
    data.update(over)
    return ModelCard(**data)


def make_package(directory: Path, *, model: onnx.ModelProto | None = None, **card_kw) -> Path:
    """Write ``model.onnx`` and a matching ``model.json`` into ``directory``; returns it."""
    directory.mkdir(parents=True, exist_ok=True)
    if model is None:
        model = cam_model(height=card_kw.get("height", 64), width=card_kw.get("width", 64),
                          channels=card_kw.get("channels", 1), k=len(card_kw.get("labels", ("a", "b"))))
    onnx.save(model, directory / "model.onnx")
    save_card(card_for(sha256_file(directory / "model.onnx"), **card_kw), directory)
    return directory
