import pytest
import torch
from safetensors.torch import save_file

from lie_cam import attacks
from lie_cam.audit import detectors
from lie_cam.models import as_model, load_model_file
from lie_cam.attacks import channel_hijack


@pytest.fixture(scope="module")
def networks(random_input, small_vgg):
    model = small_vgg()
    nets = {"clean": model, "hijack": channel_hijack(model, random_input(8))}
    nets.update(attacks.paper_networks(model))
    return nets, random_input(3, seed=1)


# Each detector against an attack it is meant to catch (the source model is the clean one).
CASES = [("a", "T1"), ("a", "T4"), ("b", "hijack"), ("b", "T2"), ("c", "hijack"), ("c", "T3"), ("d", "hijack"),
         ("d", "T4"), ("e", "hijack"), ("e", "T3"), ("f", "T3"), ("f2", "T3"), ("g", "hijack")]


@pytest.mark.parametrize("key,attack", CASES)
def test_detector_separates_attack_from_its_source(networks, key, attack):
    nets, x = networks
    detector = next(d for d in detectors.DETECTORS if d.key == key)

    def score(net):
        return detector.function(net, x) if detector.needs_clean_data else detector.function(net)

    clean, attacked = score(nets["clean"]), score(nets[attack])
    assert attacked > clean, (key, attack, clean, attacked)


def test_architecture_check_passes_hijack_and_its_file(random_input, networks, tmp_path):
    nets, _ = networks
    assert detectors.architecture_score(nets["clean"]) == 0
    assert detectors.architecture_score(nets["hijack"]) == 0
    path = tmp_path / "hijack.safetensors"
    save_file({k: v.contiguous() for k, v in nets["hijack"].state_dict().items()}, str(path))
    assert detectors.architecture_score(path) == 0
    loaded = load_model_file(path)
    x = random_input(2)
    assert torch.equal(loaded(x), nets["hijack"](x))
    problems = detectors.architecture_problems(nets["T1"])
    assert any("ManipulatedVGG" in p for p in problems)


def test_state_dict_with_extra_key_is_flagged(small_vgg, tmp_path):
    state = {k: v.contiguous() for k, v in small_vgg().state_dict().items()}
    state["features.28.weight"] = torch.cat([state["features.28.weight"], state["features.28.weight"][:1]])
    path = tmp_path / "wide.pt"
    torch.save(state, path)
    assert detectors.architecture_score(path) >= 1
    with pytest.raises(ValueError, match="not a torchvision VGG"):
        load_model_file(path)


def test_pickled_file_is_refused(small_vgg, tmp_path):
    path = tmp_path / "model.pt"
    torch.save(small_vgg(), path)  # a whole pickled module, not a state_dict
    with pytest.raises(ValueError, match="refusing to load"):
        as_model(path)


def test_auroc_and_tpr():
    assert detectors.auroc([0, 1, 2], [3, 4]) == 1.0
    assert detectors.auroc([0, 1], [0, 1]) == 0.5
    assert detectors.auroc([5], [1]) == 0.0
    assert detectors.tpr_at_fpr([0, 1, 2], [1.5, 3], 0.01) == 0.5


def test_bad_clean_images(networks):
    nets, _ = networks
    with pytest.raises(ValueError, match="clean images"):
        detectors.alpha_dominance(nets["clean"], torch.zeros(3, 224, 224))


def test_pruned_zoo_model_is_a_plain_vgg_keeping_the_largest_filters(random_input, small_vgg):
    from lie_cam.experiments.zoo import prune_filters

    model = small_vgg()
    narrow = prune_filters(model, width=1 / 32)
    assert [m.out_channels for m in narrow.features if isinstance(m, torch.nn.Conv2d)][-3:] == [16, 16, 16]
    assert detectors.architecture_score(narrow) == 0
    old = model.features[24]
    keep = old.weight.abs().sum(dim=(1, 2, 3)).topk(16).indices.sort().values
    assert torch.equal(narrow.features[24].weight, old.weight[keep])
    assert narrow(random_input(1)).shape == (1, 10)


# --- bad arguments (issue 23): one clear error naming the argument ------------------------------------------------


def _with_one_bad_weight(model: torch.nn.Module, value: float) -> torch.nn.Module:
    import copy

    bad = copy.deepcopy(model)
    with torch.no_grad():
        bad.classifier[0].weight[0, 0] = value
    return bad


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("key", [d.key for d in detectors.DETECTORS if d.key != "a"])
def test_detectors_refuse_non_finite_weights_by_name(small_vgg, random_input, key, value):
    detector = next(d for d in detectors.DETECTORS if d.key == key)
    bad, x = _with_one_bad_weight(small_vgg(), value), random_input(1)
    with pytest.raises(ValueError, match=r"classifier\.0\.weight"):
        detector.function(bad, x) if detector.needs_clean_data else detector.function(bad)


def test_magnitude_score_of_a_model_without_weights():
    with pytest.raises(ValueError, match="has no weights"):
        detectors.magnitude_score(torch.nn.ReLU())


@pytest.mark.parametrize("call,message", [
    (lambda: detectors.auroc([0.1, float("nan")], [0.5]), "clean scores must be finite"),
    (lambda: detectors.auroc([0.1], [float("inf")]), "attacked scores must be finite"),
    (lambda: detectors.auroc([], [0.5]), "clean must hold at least one"),
    (lambda: detectors.auroc("abc", [0.5]), "clean must be a sequence of numbers"),
    (lambda: detectors.tpr_at_fpr([0.1, 0.2], [0.5], fpr=-0.1), r"fpr must be in \[0, 1\]"),
    (lambda: detectors.tpr_at_fpr([0.1, 0.2], [0.5], fpr=1.5), r"fpr must be in \[0, 1\]"),
    (lambda: detectors.tpr_at_fpr([0.1, 0.2], [0.5], fpr=True), r"fpr must be in \[0, 1\]"),
    (lambda: detectors.tpr_at_fpr([float("nan"), 0.2], [0.5]), "clean scores must be finite"),
    (lambda: detectors.tpr_at_fpr([], [0.5]), "clean must hold at least one"),
])
def test_roc_statistics_refuse_bad_scores(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_tpr_at_fpr_one_flags_everything():
    assert detectors.tpr_at_fpr([0.1, 0.2], [0.0, 0.5], fpr=1.0) == 1.0
    assert detectors.tpr_at_fpr([0.1, 0.2], [0.0, 0.5], fpr=0.0) == 0.5


@pytest.mark.parametrize("call,message", [
    (lambda m, x: detectors.gradient_check(m, x, h=0), "h must be a finite number > 0"),
    (lambda m, x: detectors.gradient_check(m, x, h=-1e-2), "h must be"),
    (lambda m, x: detectors.gradient_check(m, x, h=float("nan")), "h must be"),
    (lambda m, x: detectors.ig_completeness(m, x, steps=0), r"steps must be an integer in \[1"),
    (lambda m, x: detectors.ig_completeness(m, x, steps=2.5), "steps must be an integer"),
    (lambda m, x: detectors.occlusion_disagreement(m, x, grid=0), r"grid must be an integer in \[1, 224\]"),
    (lambda m, x: detectors.occlusion_disagreement(m, x, grid=500), r"grid must be an integer in \[1, 224\]"),
    (lambda m, x: detectors.occlusion_map(m, x, torch.zeros(1, dtype=torch.long), grid=0), "grid must be"),
    (lambda m, x: detectors.randomization_score(m, x, seed="a"), "seed must be an integer"),
    (lambda m, x: detectors.activation_score(m, x[:0]), "B >= 1"),
    (lambda m, x: detectors.alpha_dominance(m, x * float("nan")), "clean images must be finite"),
])
def test_detector_arguments_are_checked_by_name(small_vgg, random_input, call, message):
    with pytest.raises(ValueError, match=message):
        call(small_vgg(), random_input(1))


def test_architecture_and_score_all_refuse_what_is_not_a_model_or_a_detector(small_vgg, random_input):
    with pytest.raises(TypeError, match="expected an nn.Module or the path of a weights file"):
        detectors.architecture_problems(42)
    with pytest.raises(TypeError, match="detectors must be a sequence of Detector"):
        detectors.score_all(small_vgg(), random_input(1), detectors=("b",))
