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
