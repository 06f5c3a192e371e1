"""load_onnx: VGG-type ONNX graphs (Keras-like NHWC with an HWC flatten, torch NCHW with global pooling)
become plain PyTorch models equal to onnxruntime's outputs; what it cannot map is refused by name."""

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lie_cam.anatomy import split_vgg
from lie_cam.models import PartsModel, load_onnx
from lie_cam.onnx_import import Permute


MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)




class KerasLike(nn.Module):
    """What tf2onnx makes of a Keras VGG: NHWC input in [0, 1], normalised in the graph, a conv trunk,
    a Transpose to NHWC before the flatten (H, W, C order), Dense as MatMul + Add, BatchNorm after a
    ReLU, a final Softmax. 40 px in, A 10 x 10, pooled to 5 x 5."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(MEAN).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).reshape(1, 3, 1, 1))
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.w1 = nn.Parameter(0.05 * torch.randn(16 * 5 * 5, 12))
        self.b1 = nn.Parameter(0.1 * torch.randn(12))
        self.bn1 = nn.BatchNorm1d(12)
        self.fc2 = nn.Linear(12, 10)
        self.bn2 = nn.BatchNorm1d(10)
        self.fc3 = nn.Linear(10, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.permute(0, 3, 1, 2) - self.mean) / self.std
        z = self.pool(self.features(x)).permute(0, 2, 3, 1).flatten(1)
        z = self.bn1(F.relu(z @ self.w1 + self.b1))
        z = self.bn2(self.fc2(z)).relu()
        return F.softmax(self.fc3(z), dim=1)


class TorchGAP(nn.Module):
    """A torch export: NCHW input (48 px), conv trunk, BatchNorm2d before A's ReLU, global average pooling
    (GlobalAveragePool + Flatten, or ReduceMean), Gemm."""

    def __init__(self, mean: bool = False) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU())
        self.pool = (lambda a: a.mean(dim=(2, 3))) if mean else nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(12, 9), nn.ReLU(), nn.Dropout(), nn.Linear(9, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))


def _export(net: nn.Module, shape: tuple[int, ...], path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(net, (torch.rand(1, *shape),), str(path), dynamo=False, input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "batch"}})
    return str(path)


def _logits_session(path: str):
    """onnxruntime on the graph, its output moved before a final Softmax when there is one."""
    proto = onnx.load(path)
    last = proto.graph.node[-1]
    if last.op_type == "Softmax":
        del proto.graph.output[:]
        proto.graph.output.append(onnx.helper.make_tensor_value_info(last.input[0], onnx.TensorProto.FLOAT, None))
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def _scenes(side: int, n: int = 4) -> torch.Tensor:
    """Real pictures: lie_cam's synthetic scenes, resized to side x side, pixels in [0, 1]."""
    from lie_cam.data import render_many

    images, _, _ = render_many(n, seed=11)
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255
    return F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)


def _normalise(pixels: torch.Tensor, spec) -> torch.Tensor:
    return (pixels - torch.tensor(spec.mean)[:, None, None]) / torch.tensor(spec.std)[:, None, None]


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def keras_like(tmp_path_factory, randomise_bn):
    torch.manual_seed(0)
    net = randomise_bn(KerasLike(), 1, 0.3)
    path = _export(net, (40, 40, 3), tmp_path_factory.mktemp("onnx") / "keras_like.onnx")
    with pytest.warns(UserWarning, match="Softmax, which was removed"):
        model = load_onnx(path)
    return net, path, model


def test_keras_like_graph_matches_onnxruntime(keras_like):
    net, path, model = keras_like
    session = _logits_session(path)
    probabilities = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    inputs = torch.cat([torch.rand(4, 3, 40, 40, generator=torch.Generator().manual_seed(2)), _scenes(40)])
    pixels = inputs.permute(0, 2, 3, 1).numpy()  # the graph's NHWC, pixels in [0, 1]
    with torch.no_grad():  # the model takes x = (p - mean) / std, its input spec
        logits = model(_normalise(inputs, model.input_spec)).numpy()
    assert _relative(logits, session.run(None, {"input": pixels})[0]) <= 1e-5
    assert _relative(F.softmax(torch.from_numpy(logits), 1).numpy(),
                     probabilities.run(None, {"input": pixels})[0]) <= 1e-5
    assert model.softmax_removed is True and model.source_layout == "NHWC"


def test_keras_like_graph_becomes_the_canonical_vgg_form(keras_like):
    net, _, model = keras_like
    assert isinstance(model, PartsModel) and not model.training
    parts = split_vgg(model)  # the surgery's own reading
    assert parts.last_conv.out_channels == 16 and parts.pixels_per_channel == 25 and parts.pools_before_a == 2
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.Softmax)) for m in model.classifier)  # folded, removed
    assert [type(m) for m in model.classifier] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    # FC1 reads A in (C, H, W) order: its column (c, h, w) is the graph's row (h, w, c) of the HWC flatten
    # (BN1 comes after the ReLU: it is folded forward into FC2, and FC1 keeps the graph's weights, moved).
    hwc = net.w1.detach().T.reshape(12, 5, 5, 16)
    assert torch.equal(model.classifier[0].weight, hwc.permute(0, 3, 1, 2).reshape(12, -1))


def test_the_input_spec_is_read_from_the_graph(keras_like):
    spec = keras_like[2].input_spec
    assert spec.side == 40
    assert np.allclose(spec.mean, MEAN, atol=1e-7) and np.allclose(spec.std, STD, atol=1e-7)


def test_pixel_scale_says_what_the_graph_input_is(keras_like, tmp_path):
    with pytest.warns(UserWarning):
        spec = load_onnx(keras_like[1], pixel_scale=255).input_spec
    assert np.allclose(spec.std, [s / 255 for s in STD]) and np.allclose(spec.mean, [m / 255 for m in MEAN])
    with pytest.raises(ValueError, match="pixel_scale"):
        load_onnx(keras_like[1], pixel_scale=0)
    with pytest.raises(FileNotFoundError, match="not a file"):
        load_onnx(tmp_path / "missing.onnx")


@pytest.mark.parametrize("mean, op", [(False, "GlobalAveragePool"), (True, "ReduceMean")])
def test_nchw_graph_with_global_pooling_matches_onnxruntime(mean, op, tmp_path, randomise_bn):
    torch.manual_seed(3)
    net = randomise_bn(TorchGAP(mean), 4, 0.3)
    path = _export(net, (3, 48, 48), tmp_path / "gap.onnx")
    assert op in {n.op_type for n in onnx.load(path).graph.node}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no Softmax: no warning
        model = load_onnx(path)
    assert model.softmax_removed is False and model.input_spec.side == 48 and model.source_layout == "NCHW"
    assert model.input_spec.mean == (0.0, 0.0, 0.0) and model.input_spec.std == (1.0, 1.0, 1.0)
    x = torch.cat([torch.randn(3, 3, 48, 48, generator=torch.Generator().manual_seed(5)), _scenes(48)])
    with torch.no_grad():
        logits = model(x).numpy()
    expected = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    assert _relative(logits, expected) <= 1e-5
    assert model.classifier[0].in_features == 12 * 24 * 24  # the pooling is part of FC1 now


class WithSigmoid(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 16 * 16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.sigmoid(self.conv(x)).flatten(1))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 3, 3, padding=1), nn.Linear(3 * 16 * 16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x) + x).flatten(1))


class NotAFlatten(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(16 * 16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).reshape(1, 4, -1)).sum(1)


@pytest.mark.parametrize("net, op", [(WithSigmoid, "Sigmoid"), (Residual, "Add"), (NotAFlatten, "Reshape")])
def test_an_unsupported_node_is_named_and_from_parts_is_pointed_to(net, op, tmp_path):
    path = _export(net().eval(), (3, 16, 16), tmp_path / "bad.onnx")
    name = next(n.name for n in onnx.load(path).graph.node if n.op_type == op)
    with pytest.raises(ValueError, match="from_parts") as error:
        load_onnx(path)
    assert f"(op {op})" in str(error.value) and repr(name) in str(error.value)


def test_transposes_that_cancel_between_convolutions_are_skipped(keras_like, tmp_path):
    """An unoptimised export goes NCHW -> NHWC -> NCHW around a layer; the pair changes nothing."""
    proto = onnx.load(keras_like[1])
    nodes = list(proto.graph.node)
    relu = next(n for n in nodes if n.op_type == "Relu")
    pair = [onnx.helper.make_node("Transpose", [relu.output[0]], ["to_nhwc"], perm=[0, 2, 3, 1], name="to_nhwc"),
            onnx.helper.make_node("Transpose", ["to_nhwc"], ["to_nchw"], perm=[0, 3, 1, 2], name="to_nchw")]
    for node in nodes:
        node.input[:] = ["to_nchw" if name == relu.output[0] else name for name in node.input]
    at = nodes.index(relu) + 1
    del proto.graph.node[:]
    proto.graph.node.extend(nodes[:at] + pair + nodes[at:])
    path = str(tmp_path / "transposed.onnx")
    onnx.save(proto, path)
    with pytest.warns(UserWarning, match="Softmax"):
        model = load_onnx(path)
    x = torch.rand(3, 3, 40, 40, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        logits = model(_normalise(x, model.input_spec)).numpy()
    assert _relative(logits, _logits_session(path).run(None, {"input": x.permute(0, 2, 3, 1).numpy()})[0]) <= 1e-5
    assert not any(isinstance(m, Permute) for m in model.features)
