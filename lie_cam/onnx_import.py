"""A VGG-type network from an ONNX file, as a plain PyTorch model the surgery takes (`load_onnx`).

The graph is read with the `onnx` package (no runtime) and walked from its input to its output as
one chain of nodes (the shape computations feeding a Reshape are skipped):

    input --[Transpose NHWC->NCHW] [Sub/Div/Mul/Add by constants]--> the input spec
          --Conv/Relu/MaxPool/AveragePool/BatchNormalization-->    features (ends at A: the ReLU
                                                                   after the last Conv)
          --[pooling] [Transpose] Flatten/Reshape | GlobalAveragePool/ReduceMean--> P (before FC1)
          --MatMul+Add | Gemm, Relu, BatchNormalization, Mul/Add, Dropout-->        the dense head
          --[Softmax]                                                               removed, and said so

Keras models exported with tf2onnx (NHWC input, a Transpose before the flatten, so the flatten is in
(H, W, C) order; BatchNormalization as Mul + Add; a pair of Transposes that cancel out between
convolutions is skipped) and torch exports (NCHW) both fit. The parts go
through `lie_cam.parts.from_parts`, which rewrites FC1 to read A in (C, H, W) order and folds each
elementwise affine layer of the head, s * z + t (a Dense bias, a BatchNorm in eval mode), into the
Linear before it (W' = diag(s) W, b' = s b + t) or else the one after it (W' = W diag(s), b' = b + W t).

The input spec: with g = pixel_scale * p the graph's input for pixels p in [0, 1] and the leading
constant nodes computing x = a g + c per channel, x = (p - mean) / std with std = 1 / (a pixel_scale),
mean = -c / (a pixel_scale).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lie_cam.anatomy import InputSpec
from lie_cam.parts import HOW_TO_PASS_IN_PARTS, ChannelAffine, PartsModel, from_parts

__all__ = ["load_onnx", "Permute", "ReduceMean"]

_SKIP = {"Dropout", "Identity", "Cast"}
_ELEMENTWISE = {"Mul", "Div", "Add", "Sub"}


class Permute(nn.Module):
    """x.permute(*dims): an ONNX Transpose (e.g. NCHW -> NHWC before a Keras flatten)."""

    def __init__(self, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.dims = tuple(int(d) for d in dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


class ReduceMean(nn.Module):
    """x.mean(axes, keepdim): an ONNX ReduceMean (global average pooling)."""

    def __init__(self, axes: tuple[int, ...], keepdims: bool) -> None:
        super().__init__()
        self.axes = tuple(int(a) for a in axes)
        self.keepdims = bool(keepdims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=self.axes, keepdim=self.keepdims)


class _Graph:
    """The nodes, constants and consumers of an ONNX graph."""

    def __init__(self, model) -> None:
        from onnx import numpy_helper

        graph = model.graph
        self.constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.nodes = list(graph.node)
        for node in self.nodes:
            if node.op_type == "Constant":
                self.constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
            elif node.op_type == "Identity" and node.input[0] in self.constants:
                self.constants[node.output[0]] = self.constants[node.input[0]]
        self.consumers: dict[str, list] = {}
        for node in self.nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        inputs = [i for i in graph.input if i.name not in self.constants]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise ValueError(f"load_onnx: expected a graph with one image input and one output, got inputs "
                             f"{[i.name for i in inputs]} and outputs {[o.name for o in graph.output]}")
        self.input = inputs[0]
        self.output = graph.output[0].name

    def next_node(self, tensor: str):
        """The one node that reads `tensor` as data (not through a Shape); None at the graph's output."""
        readers = [n for n in self.consumers.get(tensor, []) if n.op_type != "Shape"]
        if len(readers) > 1:
            raise _unsupported(readers[1], f"the graph branches at {tensor!r} (read by "
                                           f"{[n.name for n in readers]}); only a chain of layers is mapped")
        return readers[0] if readers else None

    def constant(self, node, index: int) -> np.ndarray:
        if index >= len(node.input) or node.input[index] not in self.constants:
            raise _unsupported(node, f"its input {index} is not a constant")
        return np.asarray(self.constants[node.input[index]], dtype=np.float64)


def _attributes(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _unsupported(node, why: str = "") -> ValueError:
    detail = f": {why}" if why else ""
    return ValueError(f"load_onnx cannot map node {node.name!r} (op {node.op_type}){detail}. It maps a VGG-type "
                      f"chain (Conv/Relu/MaxPool, a flatten or global pooling, a dense head). Otherwise rebuild the "
                      f"network in PyTorch; {HOW_TO_PASS_IN_PARTS}")


def _input_layout(value_info) -> tuple[str, int]:
    """('NHWC' or 'NCHW', side) from the graph input's shape."""
    dims = [d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise ValueError(f"load_onnx: the input {value_info.name!r} has shape {dims}; expected 4 dimensions")
    if dims[3] in (1, 3) and dims[1] not in (1, 3):
        layout, (h, w) = "NHWC", dims[1:3]
    else:
        layout, (h, w) = "NCHW", dims[2:4]
    if h is None or h != w:
        raise ValueError(f"load_onnx: the input {value_info.name!r} has spatial size {h} x {w}; expected a fixed "
                         f"square size (set it when exporting)")
    return layout, int(h)


def _per_channel(values: np.ndarray, node, layout: str) -> np.ndarray:
    """A scalar or per-channel constant as 3 values (broadcast along C of NHWC / NCHW)."""
    if values.size == 1:
        return np.full(3, float(values.reshape(-1)[0]))
    squeezed = values.reshape(-1)
    shape_ok = values.shape[-1] == 3 if layout == "NHWC" else (values.ndim >= 3 and values.shape[-3] == 3)
    if squeezed.size != 3 or not (shape_ok or values.ndim == 1 and layout == "NHWC"):
        raise _unsupported(node, f"a constant of shape {values.shape} applied to the {layout} input")
    return squeezed


def _affine_update(node, graph: _Graph, layout: str, a: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x -> a x + c composed with the elementwise node (constant second input)."""
    k = _per_channel(graph.constant(node, 1), node, layout)
    op = node.op_type
    if op == "Mul":
        return a * k, c * k
    if op == "Div":
        return a / k, c / k
    return (a, c + k) if op == "Add" else (a, c - k)


def _conv(node, graph: _Graph) -> nn.Conv2d:
    att = _attributes(node)
    weight = graph.constant(node, 1)
    bias = graph.constant(node, 2) if len(node.input) > 2 and node.input[2] else None
    kernel, strides, groups = tuple(weight.shape[2:]), tuple(att.get("strides", (1, 1))), att.get("group", 1)
    conv = nn.Conv2d(weight.shape[1] * groups, weight.shape[0], kernel, stride=strides,
                     padding=_pads(node, att, kernel, strides), dilation=tuple(att.get("dilations", (1, 1))),
                     groups=groups, bias=bias is not None)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(weight))
        if bias is not None:
            conv.bias.copy_(torch.from_numpy(bias))
    return conv


def _pads(node, att: dict, kernel: tuple[int, ...], strides: tuple[int, ...]) -> tuple[int, int]:
    """Symmetric padding (top = bottom, left = right) from `pads` or `auto_pad`."""
    auto = att.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto == "VALID":
        return (0, 0)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        if any(s != 1 for s in strides) or any(k % 2 == 0 for k in kernel):
            raise _unsupported(node, f"auto_pad {auto} with stride {strides} and kernel {kernel} is asymmetric")
        return (kernel[0] // 2, kernel[1] // 2)
    pads = tuple(att.get("pads", (0, 0, 0, 0)))
    if pads[0] != pads[2] or pads[1] != pads[3]:
        raise _unsupported(node, f"asymmetric padding {pads}")
    return (pads[0], pads[1])


def _pool(node) -> nn.Module:
    att = _attributes(node)
    kernel = tuple(att["kernel_shape"])
    strides = tuple(att.get("strides", (1, 1)))
    padding = _pads(node, att, kernel, strides)
    ceil = bool(att.get("ceil_mode", 0))
    if node.op_type == "MaxPool":
        return nn.MaxPool2d(kernel, strides, padding, dilation=tuple(att.get("dilations", (1, 1))), ceil_mode=ceil)
    return nn.AvgPool2d(kernel, strides, padding, ceil_mode=ceil,
                        count_include_pad=bool(att.get("count_include_pad", 0)))


def _batchnorm2d(node, graph: _Graph) -> nn.BatchNorm2d:
    scale, shift, mean, var = (graph.constant(node, i) for i in range(1, 5))
    bn = nn.BatchNorm2d(scale.size, eps=float(_attributes(node).get("epsilon", 1e-5)))
    with torch.no_grad():
        for tensor, value in ((bn.weight, scale), (bn.bias, shift), (bn.running_mean, mean), (bn.running_var, var)):
            tensor.copy_(torch.from_numpy(value))
    return bn.eval()


def _linear(weight: np.ndarray, bias: np.ndarray | None) -> nn.Linear:
    """Linear(in, out) from a weight of shape out x in."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], dtype=torch.float64)  # float32 once folded
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(weight))
        linear.bias.copy_(torch.from_numpy(bias) if bias is not None else torch.zeros(weight.shape[0]))
    return linear


def _dense(node, graph: _Graph) -> nn.Linear:
    """MatMul by a constant (in x out) or Gemm (alpha A B' + beta C)."""
    if node.op_type == "MatMul":
        weight = graph.constant(node, 1)
        if weight.ndim != 2:
            raise _unsupported(node, f"a MatMul by a constant of shape {weight.shape}")
        return _linear(weight.T.copy(), None)
    att = _attributes(node)
    if att.get("transA", 0):
        raise _unsupported(node, "transA = 1")
    weight = graph.constant(node, 1) * att.get("alpha", 1.0)
    weight = weight if att.get("transB", 0) else weight.T.copy()
    bias = graph.constant(node, 2) * att.get("beta", 1.0) if len(node.input) > 2 and node.input[2] else None
    return _linear(weight, None if bias is None else np.broadcast_to(bias, weight.shape[:1]).copy())


def _dense_affine(node, graph: _Graph) -> tuple[np.ndarray, np.ndarray]:
    """(s, t) of a head node computing s * z + t per feature."""
    if node.op_type == "BatchNormalization":
        scale, shift, mean, var = (graph.constant(node, i) for i in range(1, 5))
        s = scale / np.sqrt(var + float(_attributes(node).get("epsilon", 1e-5)))
        return s, shift - mean * s
    k = graph.constant(node, 1).reshape(-1)
    if node.op_type in ("Mul", "Div"):
        if node.op_type == "Div" and not np.all(k != 0):
            raise _unsupported(node, "a division by zero")
        return (k if node.op_type == "Mul" else 1 / k), np.zeros_like(k)
    return np.ones_like(k), (k if node.op_type == "Add" else -k)


_TRUNK = {"Conv", "Relu", "MaxPool", "AveragePool", "BatchNormalization"}
_TO_HEAD = {"Transpose", "Flatten", "Reshape", "GlobalAveragePool", "ReduceMean", "MatMul", "Gemm"}


class _Walk:
    """The state of the walk from the graph's input to its output."""

    def __init__(self, graph: _Graph) -> None:
        self.graph = graph
        self.layout, self.side = _input_layout(graph.input)
        self.source_layout = self.layout
        self.a, self.c = np.ones(3), np.zeros(3)  # x = a g + c per channel, before the first Conv
        self.stage = "input"
        self.trunk: list[nn.Module] = []
        self.head: list[nn.Module] = []
        self.softmax_removed = False
        self.skip_next = False  # the second of two Transposes that cancel out

    def run(self) -> None:
        tensor = self.graph.input.name
        while (node := self.graph.next_node(tensor)) is not None:
            if node.input[0] != tensor:
                raise _unsupported(node, f"it reads the data {tensor!r} as its input {list(node.input).index(tensor)}")
            if self.softmax_removed:
                raise _unsupported(node, "a node after the Softmax")
            if self.skip_next:
                self.skip_next = False
            elif node.op_type not in _SKIP:
                getattr(self, f"_{self.stage}")(node)
            tensor = node.output[0]
        if tensor != self.graph.output:
            raise ValueError(f"load_onnx: the chain of layers ends at {tensor!r}, not at the graph's output "
                             f"{self.graph.output!r}; {HOW_TO_PASS_IN_PARTS}")
        if not self.head or not any(isinstance(m, nn.Linear) for m in self.head):
            raise ValueError(f"load_onnx: the graph has no dense layer after its convolutions; {HOW_TO_PASS_IN_PARTS}")

    def _input(self, node) -> None:
        op = node.op_type
        if op == "Transpose" and self.layout == "NHWC" and list(_attributes(node)["perm"]) == [0, 3, 1, 2]:
            self.layout = "NCHW"
        elif op in _ELEMENTWISE:
            self.a, self.c = _affine_update(node, self.graph, self.layout, self.a, self.c)
        elif op == "Conv" and self.layout == "NCHW":
            self.stage = "trunk"
            self._trunk(node)
        else:
            raise _unsupported(node, f"before the first Conv, on the {self.layout} input")

    def _cancels(self, node) -> bool:
        """Whether this Transpose is undone by the next node (an unoptimised export's NCHW -> NHWC -> NCHW)."""
        following = self.graph.next_node(node.output[0])
        if following is None or following.op_type != "Transpose":
            return False
        first, second = _attributes(node).get("perm"), _attributes(following).get("perm")
        return first is not None and second is not None and [first[i] for i in second] == list(range(len(first)))

    def _trunk(self, node) -> None:
        op = node.op_type
        if op == "Transpose" and self._cancels(node):
            self.skip_next = True
        elif op in _TO_HEAD:
            self.stage = "head"
            self._head(node)
        elif op == "Conv":
            self.trunk.append(_conv(node, self.graph))
        elif op == "Relu":
            self.trunk.append(nn.ReLU())
        elif op in ("MaxPool", "AveragePool"):
            self.trunk.append(_pool(node))
        elif op == "BatchNormalization":
            self.trunk.append(_batchnorm2d(node, self.graph))
        else:
            raise _unsupported(node, "in the convolutional part")

    def _head(self, node) -> None:
        op, att = node.op_type, _attributes(node)
        dense = any(isinstance(m, nn.Linear) for m in self.head)
        if op == "Transpose" and not dense:
            self.head.append(Permute(tuple(att["perm"])))
        elif op in ("Flatten", "Reshape", "Squeeze") and not dense:
            if op == "Flatten" and att.get("axis", 1) != 1:
                raise _unsupported(node, f"a Flatten at axis {att['axis']}")
            shape = self.graph.constants.get(node.input[1]) if op == "Reshape" else None
            if shape is not None and np.asarray(shape).size != 2:
                raise _unsupported(node, f"a Reshape to {np.asarray(shape).tolist()}, not a flatten to 2 dimensions")
            self.head.append(nn.Flatten())
        elif op == "GlobalAveragePool" and not dense:
            self.head.append(nn.AdaptiveAvgPool2d(1))
        elif op == "ReduceMean" and not dense:
            axes = att.get("axes") or self.graph.constant(node, 1).astype(int).tolist()
            self.head.append(ReduceMean(tuple(axes), bool(att.get("keepdims", 1))))
        elif op in ("MatMul", "Gemm"):
            self.head.append(_dense(node, self.graph))
        elif op == "Relu":
            self.head.append(nn.ReLU())
        elif (op in _ELEMENTWISE or op == "BatchNormalization") and dense:
            self.head.append(ChannelAffine(*(torch.from_numpy(v).float() for v in _dense_affine(node, self.graph))))
        elif op == "Softmax" and node.output[0] == self.graph.output:
            self.softmax_removed = True
        else:
            where = "in the dense head" if dense else "between the convolutions and the first dense layer"
            raise _unsupported(node, where)

    def parts(self) -> tuple[nn.Sequential, nn.Sequential]:
        """(features ending at A = the ReLU after the last Conv, the head from A on)."""
        modules = self.trunk
        last = max(i for i, m in enumerate(modules) if isinstance(m, nn.Conv2d))
        end = last + 1
        while end < len(modules) and isinstance(modules[end], nn.BatchNorm2d):
            end += 1
        if end >= len(modules) or not isinstance(modules[end], nn.ReLU):
            raise ValueError(f"load_onnx: the last Conv is not followed by a Relu, so there is no A for Grad-CAM to "
                             f"explain; {HOW_TO_PASS_IN_PARTS}")
        head = [m.float() for m in modules[end + 1:] + self.head]
        return nn.Sequential(*modules[:end + 1]), nn.Sequential(*head)

    def input_spec(self, pixel_scale: float) -> InputSpec:
        """x = a g + c with g = pixel_scale p: x = (p - mean) / std."""
        gain = self.a * pixel_scale
        if not np.all(gain > 0):
            raise ValueError(f"load_onnx: the graph scales its input by {self.a.tolist()} per channel; expected a "
                             f"positive scale")
        return InputSpec(side=self.side, mean=tuple(float(v) + 0.0 for v in -self.c / gain),
                         std=tuple(float(v) for v in 1 / gain))


def _import_onnx():
    try:
        import onnx
    except ImportError as error:
        raise ImportError("load_onnx reads the graph with the `onnx` package: pip install 'lie_cam[real]' "
                          "(or pip install onnx)") from error
    return onnx


def load_onnx(path: str | Path, pixel_scale: float = 1.0) -> PartsModel:
    """A VGG-type network from an ONNX file (see the module docstring), in eval mode, float32, NCHW input.

    pixel_scale: the value the graph's input takes for a white pixel (1 for inputs in [0, 1], 255 for
    [0, 255]); with the graph's own constant normalisation it gives `model.input_spec` (side, mean, std).
    The model takes NCHW input; `model.source_layout` says what the graph took ("NHWC" for Keras).
    A final Softmax is removed (Grad-CAM explains logits; the probabilities are softmax(model(x))):
    `model.softmax_removed` is True and a UserWarning says so. ValueError naming the first node that
    is not mapped, with how to pass the network in parts instead (`lie_cam.models.from_parts`)."""
    onnx = _import_onnx()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_onnx: {path} is not a file; expected an .onnx model")
    if isinstance(pixel_scale, bool) or not isinstance(pixel_scale, (int, float)) or not pixel_scale > 0:
        raise ValueError(f"pixel_scale must be a positive number (1 for inputs in [0, 1], 255 for [0, 255]), "
                         f"got {pixel_scale!r}")
    try:
        proto = onnx.load(str(path))
    except Exception as error:  # onnx's DecodeError and friends
        raise ValueError(f"load_onnx: {path} could not be read as an ONNX model ({error})") from error
    walk = _Walk(_Graph(proto))
    walk.run()
    features, head = walk.parts()
    model = from_parts(features, head, preprocess=walk.input_spec(float(pixel_scale)))
    model.softmax_removed = walk.softmax_removed
    model.source_layout = walk.source_layout
    if walk.softmax_removed:
        warnings.warn(f"load_onnx: the graph in {path.name} ends with a Softmax, which was removed: the model "
                      "returns logits (Grad-CAM explains scores before the softmax); its probabilities are "
                      "softmax(model(x))", UserWarning, stacklevel=2)
    return model
