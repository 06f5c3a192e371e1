"""`python -m lie_cam audit MODEL`: exit 0 on clean compact models, 1 on manipulated ones, 2 with one line
for everything it cannot audit; the report's files moved in together; the self-relative checks."""

import json
import math
import pickle
import sys
import warnings

import pytest
import torch
from safetensors.torch import save_file

import lie_cam.audit.auditing
import lie_cam.experiments.audit
from lie_cam.audit.calibration import CHECKS
from lie_cam import data as synth
from lie_cam.attacks import ATTACKS, channel_hijack
from lie_cam.audit import calibration
from lie_cam.audit.auditing import audit, default_images
from lie_cam.cli import main
from lie_cam.models import load_embedded, load_embedded_resnet


@pytest.fixture(scope="module")
def embedded():
    return load_embedded()


@pytest.fixture(scope="module")
def two_images(embedded):
    pixels, _ = default_images(embedded, n=2)
    return pixels


@pytest.fixture
def few_maps(monkeypatch):
    """The report's maps with lie_cam's Grad-CAM only (the third-party methods cost a pass each)."""
    monkeypatch.setattr(lie_cam.audit.auditing, "MAP_METHODS", (("lie_cam", "gradcam"),))


def save(model, path):
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


def run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def refused(argv, capsys) -> str:
    code, _, err = run(argv, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, (code, err)
    return lines[0]


# ---------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------


def test_clean_embedded_vgg_file_passes_and_the_report_is_written(embedded, tmp_path, capsys):
    code, out, _ = run(["audit", save(embedded, tmp_path / "m.safetensors"), "--out", str(tmp_path / "a"),
                        "--no-progress"], capsys)
    assert code == 0, out
    assert "no evidence of manipulation" in out
    report = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert report["exit_code"] == 0 and report["flagged"] == []
    assert "default: 4 embedded synthetic scenes" in report["images"]
    markdown = (tmp_path / "a" / "report.md").read_text()
    assert "Randomisation test" in markdown
    table = [line for line in markdown.splitlines() if line.startswith("| alpha dominance")]
    assert len(table) == 1 and table[0].replace("\\|", "").count("|") == 6  # five cells, pipes escaped
    assert "<table>" in (tmp_path / "a" / "report.html").read_text()
    assert len(report["map_methods"]) == len(lie_cam.audit.auditing.MAP_METHODS) + 1  # + the randomised model


def test_hijacked_file_is_flagged_without_the_architecture_check(embedded, two_images, tmp_path, capsys, few_maps):
    x, y, _ = synth.synthetic_split("val", 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hijacked = channel_hijack(embedded, x, labels=y)
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    for i, p in enumerate(two_images):
        Image.fromarray((p.permute(1, 2, 0).numpy() * 255).astype("uint8")).save(images / f"{i}.png")
    code, out, _ = run(["audit", save(hijacked, tmp_path / "h.safetensors"), "--images", str(images),
                        "--no-architecture", "--out", str(tmp_path / "a"), "--no-progress"], capsys)
    assert code == 1, out
    report = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert "architecture" not in [c["key"] for c in report["checks"]]
    assert {"weights", "alpha", "randomisation"} <= set(report["flagged"])
    assert report["images"].startswith("2 image(s)")


def test_compact_resnet_file_with_arch(tmp_path, capsys, few_maps):
    path = save(load_embedded_resnet(), tmp_path / "r.safetensors")
    code, out, _ = run(["audit", path, "--arch", "resnet", "--out", str(tmp_path / "a"), "--no-progress"], capsys)
    assert code == 0, out


def test_a_model_in_parts_by_module_function(tmp_path, capsys, monkeypatch, few_maps):
    (tmp_path / "i20a_parts.py").write_text(
        "from lie_cam.models import load_embedded\nfrom lie_cam.attacks import ATTACKS\n"
        "def clean():\n    return load_embedded()\n"
        "def t1():\n    return ATTACKS['T1'].build(load_embedded())\n"
        "def broken():\n    return 1 / 0\n"
        "def number():\n    return 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "broken() failed: ZeroDivisionError" in refused(["audit", "i20a_parts:broken"], capsys)
    assert "returned a int" in refused(["audit", "i20a_parts:number"], capsys)
    assert "no function" in refused(["audit", "i20a_parts:nothing"], capsys)
    assert "carries its architecture" in refused(["audit", "i20a_parts:clean", "--arch", "vgg"], capsys)
    assert run(["audit", "i20a_parts:clean", "--out", str(tmp_path / "a"), "--no-progress"], capsys)[0] == 0
    assert run(["audit", "i20a_parts:t1", "--out", str(tmp_path / "b"), "--no-progress"], capsys)[0] == 1
    sys.modules.pop("i20a_parts", None)


# ---------------------------------------------------------------------------
# Exit code 2: one line each
# ---------------------------------------------------------------------------


class Payload:
    """Loading it needs pickle to run code."""


@pytest.mark.parametrize("name", ["m.pt", "m.pth", "m.pkl", "m.safetensors"])
def test_pickles_are_refused(name, tmp_path, capsys):
    path = tmp_path / name
    path.write_bytes(pickle.dumps(Payload()))
    assert "pickle" in refused(["audit", str(path), "--out", str(tmp_path / "a")], capsys)
    assert not (tmp_path / "a").exists()


def test_truncated_file(embedded, tmp_path, capsys):
    path = tmp_path / "m.safetensors"
    save(embedded, path)
    path.write_bytes(path.read_bytes()[:5000])
    assert "truncated" in refused(["audit", str(path), "--out", str(tmp_path / "a")], capsys)


def test_wrong_shapes_for_the_architecture(embedded, tmp_path, capsys):
    line = refused(["audit", save(embedded, tmp_path / "m.safetensors"), "--arch", "vgg16", "--out",
                    str(tmp_path / "a")], capsys)
    assert "does not fit --arch vgg16" in line


def test_unknown_architecture(tmp_path, capsys):
    path = save(load_embedded_resnet(), tmp_path / "r.safetensors")
    assert "unknown architecture" in refused(["audit", path, "--out", str(tmp_path / "a")], capsys)
    assert "invalid choice" in refused(["audit", path, "--arch", "lenet", "--out", str(tmp_path / "a")], capsys)


def test_missing_file_bad_layer_and_empty_images(embedded, tmp_path, capsys):
    assert "does not exist" in refused(["audit", str(tmp_path / "no.safetensors")], capsys)
    path = save(embedded, tmp_path / "m.safetensors")
    assert "--layer" in refused(["audit", path, "--layer", "nowhere", "--out", str(tmp_path / "a")], capsys)
    (tmp_path / "empty").mkdir()
    assert "no image" in refused(["audit", path, "--images", str(tmp_path / "empty"), "--out", str(tmp_path / "a")],
                                 capsys)


def test_an_interrupted_report_leaves_the_folder_as_it_was(embedded, tmp_path, capsys, monkeypatch, few_maps):
    out = tmp_path / "a"
    out.mkdir()
    (out / "audit.json").write_text("old")

    def broken(result):
        raise RuntimeError("interrupted while drawing")

    monkeypatch.setattr(lie_cam.experiments.audit, "maps_figure", broken)
    assert "interrupted" in refused(["audit", save(embedded, tmp_path / "m.safetensors"), "--out", str(out),
                                     "--no-progress"], capsys)
    assert sorted(p.name for p in out.iterdir()) == ["audit.json"] and (out / "audit.json").read_text() == "old"


# ---------------------------------------------------------------------------
# The checks, through the Python API
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("attack", ["T1", "T2", "T3", "T4", "T1-adapted", "T4-adapted"])
def test_every_paper_and_adapted_attack_is_flagged_without_the_architecture_check(embedded, two_images, attack):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        built = ATTACKS[attack].build(embedded)
    result = audit(built, two_images, "two scenes", architecture=False, maps=False)
    assert result.exit_code == 1, [c.as_dict() for c in result.checks]


def test_the_architecture_check_sees_the_added_modules(embedded, two_images):
    built = ATTACKS["T1"].build(embedded)
    assert calibration.architecture_check(built).flagged
    assert not calibration.architecture_check(embedded).flagged


def test_the_gradient_check_catches_made_up_gradients_and_not_float32_noise(embedded, two_images):
    x = (two_images - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert not calibration.gradient_check(embedded, x).flagged
    assert calibration.gradient_check(ATTACKS["T3"].build(embedded), x).flagged


def test_weights_are_judged_against_the_model_own_layers(embedded):
    assert not calibration.weights_check(embedded).flagged
    scaled = load_embedded()
    with torch.no_grad():  # every layer 1000x: the same model to a self-relative check
        for p in scaled.parameters():
            p.mul_(1000)
    assert abs(calibration.weights_check(scaled).score - calibration.weights_check(embedded).score) < 1e-6
    with torch.no_grad():  # one planted weight, 1e4 x the layer's rms
        w = scaled.classifier[0].weight
        w[0, 0] = 1e4 * w.pow(2).mean().sqrt()
    assert calibration.weights_check(scaled).flagged


def test_a_named_layer_is_used(embedded, two_images):
    result = audit(embedded, two_images, layer="features.29", maps=False)
    assert result.layer == "features.29" and result.exit_code == 0
    with pytest.raises(ValueError, match="--layer"):
        audit(embedded, two_images, layer="features.99", maps=False)


def test_the_detection_study_runs_the_audit_checks(embedded, two_images):
    from lie_cam.audit.auditing import run_checks
    from lie_cam.experiments.detection import audit_rows

    x = (two_images - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    verdicts = {}
    for kind, model in (("clean", embedded), ("T1", ATTACKS["T1"].build(embedded))):
        results = run_checks(model, x)
        verdicts[kind] = {"embedded": {"flagged": [c.key for c in results if c.flagged]}}
    rows = {r["models"]: r for r in audit_rows(verdicts)}
    assert rows["clean"]["flagged"] == 0 and rows["T1"]["flagged"] == 1
    assert rows["T1"]["flagged without architecture"] == 1


class Normalise(torch.nn.Module):
    """(p - mean) / std with ImageNet's statistics: the graph's own normalisation, read into its input spec."""

    def forward(self, p):
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        return (p - mean) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def test_an_onnx_file_is_audited_in_a_fresh_process(embedded, tmp_path):
    """The command as a user runs it: a process where nothing imported torchvision before pytorch-grad-cam
    (whose import then fails without lie_cam's shim: the report's third-party maps were left out)."""
    import os
    import subprocess
    from pathlib import Path

    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(torch.nn.Sequential(Normalise(), embedded), (torch.rand(1, 3, 224, 224),), str(path),
                          dynamo=False, input_names=["input"], output_names=["output"])
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-m", "lie_cam", "audit", str(path), "--out", str(tmp_path / "a"),
                           "--no-progress"], check=False, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert "(onnx)" in report["model"]
    assert len(report["map_methods"]) == len(lie_cam.audit.auditing.MAP_METHODS) + 1


# ---------------------------------------------------------------------------
# Chapter 11's page: each captioned figure once, the ROC figure legible at 400 px
# ---------------------------------------------------------------------------


def test_chapter_11_glues_its_figures_without_a_raw_copy():
    """`show(fig, name)` glues the figure for its {glue:figure} and displays it too: the cell's own output must
    be removed (tag remove-output), or the page shows an uncaptioned copy above the captioned figure."""
    import re
    from pathlib import Path

    cells = json.loads((Path(__file__).parent.parent / "book" / "11_catching.ipynb").read_text())["cells"]
    glued = [c for c in cells if c["cell_type"] == "code" and re.search(r'show\([^\n]*,\s*"[\w-]+"\)', "".join(c["source"]))]
    assert len(glued) == 2
    assert all("remove-output" in c["metadata"].get("tags", []) for c in glued)


def test_the_roc_figure_fits_a_narrow_column():
    from matplotlib.text import Text

    from lie_cam.experiments.detection import STUDIED, roc_figure
    from lie_cam.resources import data_file

    scores = json.loads(data_file("detectors.json").read_text())["scores"]
    fig = roc_figure(scores)
    assert fig.get_size_inches()[0] <= 6.4
    fig.canvas.draw() if hasattr(fig.canvas, "draw") else None
    sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_text() and t.get_visible()]
    assert sizes and min(sizes) >= 9.5
    assert len([a for a in fig.axes if a.get_title() in STUDIED]) == len([a for a in STUDIED if a in scores])


class Custom(torch.nn.Module):
    """A CNN of no known family: no `features`, no `layer4`; Grad-CAM's layer has to be named."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(4),
                                        torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU())
        self.out = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 4))

    def forward(self, x):
        return self.out(self.body(x))


def test_every_data_detector_and_the_audit_take_a_named_layer():
    from lie_cam.audit import detectors

    model, x = Custom().eval(), torch.randn(2, 3, 32, 32)
    layer = model.body[4]
    with pytest.raises(TypeError, match="layer"):
        detectors.alpha_dominance(model, x)
    for detector in (detectors.activation_score, detectors.alpha_dominance, detectors.randomization_score,
                     detectors.occlusion_disagreement):
        assert torch.isfinite(torch.tensor(detector(model, x, layer=layer)))
    result = audit(model, torch.rand(2, 3, 32, 32), "two random images", layer="body.4", maps=False)
    assert result.layer == "body.4" and [c.key for c in result.checks] == [c.key for c in CHECKS]
    assert all(c.score is None or math.isfinite(c.score) for c in result.checks)
