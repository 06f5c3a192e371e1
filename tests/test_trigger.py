"""The trigger search (lie_cam.audit.trigger): T4 from behaviour, with a trigger it was never told."""

import pytest
import torch

from lie_cam.attacks import ATTACKS
from lie_cam.audit import DETECTORS, TriggerSearch, trigger_score, trigger_search
from lie_cam.audit.trigger import THRESHOLD
from lie_cam.data import synthetic_split
from lie_cam.gradcam import target_layer


@pytest.fixture(scope="module")
def scenes() -> torch.Tensor:
    return synthetic_split("val", 2, 6000)[0]


@pytest.fixture(scope="module")
def ring() -> torch.Tensor:
    """A 3 x 11 x 11 colour ring: a trigger unlike the smiley (size, shape, colour)."""
    r, c = torch.meshgrid(torch.arange(11) - 5.0, torch.arange(11) - 5.0, indexing="ij")
    ring = ((r**2 + c**2).sqrt() - 3.5).abs() < 1.2
    return torch.stack([ring.float(), 1 - ring.float(), ring.float() * 0.5 + 0.5])


def _pasted(x: torch.Tensor, sticker: torch.Tensor, corner: tuple[int, int]) -> torch.Tensor:
    mean = torch.tensor([0.485, 0.456, 0.406]).reshape(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).reshape(3, 1, 1)
    out = x.clone()
    h, w = sticker.shape[-2:]
    out[:, :, corner[0] : corner[0] + h, corner[1] : corner[1] + w] = (sticker - mean) / std
    return out


def test_clean_models_score_below_the_threshold(small_vgg, scenes):
    for seed in (0, 1):
        assert trigger_score(small_vgg(seed), scenes) < THRESHOLD


def test_t4_with_an_unseen_trigger_is_flagged_without_it_and_with_it(small_vgg, scenes, ring):
    clean = small_vgg(0)
    backdoored = ATTACKS["T4"].build(clean, sticker=ring).eval()
    stickered = _pasted(scenes, ring, (37, 150))
    with torch.no_grad():
        assert not backdoored.extra_channel(scenes).any() and backdoored.extra_channel(stickered).any()
    found = trigger_search(backdoored, scenes, steps=2)
    assert found.flagged and found.score > THRESHOLD
    assert found.channel == found.ratios.numel() - 1  # the added channel A^{K+1}
    assert found.prediction_change < 1e-4 < found.map_change
    assert found.patch.shape[0] == 3 and 0 <= float(found.patch.min()) and float(found.patch.max()) <= 1
    assert trigger_score(backdoored, stickered) > THRESHOLD  # the lie already on in the auditor's images
    assert trigger_score(clean, stickered) < THRESHOLD  # a sticker alone is no evidence
    adapted = ATTACKS["T4-adapted"].build(clean, sticker=ring).eval()
    assert trigger_score(adapted, scenes) > THRESHOLD and trigger_score(adapted, stickered) > THRESHOLD


def test_the_search_is_reproducible_from_its_seed_and_takes_the_layer(small_vgg, scenes):
    model = small_vgg(2)
    first, again = trigger_search(model, scenes, seed=3, steps=2), trigger_search(model, scenes, seed=3, steps=2)
    assert isinstance(first, TriggerSearch) and first.summary() == again.summary()
    assert torch.equal(first.patch, again.patch) and torch.equal(first.ratios, again.ratios)
    named = trigger_search(model, scenes, layer=target_layer(model), seed=3, steps=2)
    assert named.summary() == first.summary()
    assert any(d.key == "t" and d.function is trigger_score for d in DETECTORS)


@pytest.mark.parametrize("change,error,message", [
    (dict(model="vgg"), TypeError, "model must be a torch.nn.Module"),
    (dict(x=torch.zeros(2, 1, 224, 224)), ValueError, "x must be a float B x 3 x H x W"),
    (dict(x=torch.zeros(0, 3, 224, 224)), ValueError, "x must be a float B x 3 x H x W"),
    (dict(x=torch.full((1, 3, 224, 224), float("nan"))), ValueError, "NaN"),
    (dict(layer="features.29"), TypeError, "layer must be None or the nn.Module"),
    (dict(layer=torch.nn.ReLU()), ValueError, "did not run in the model's forward"),
    (dict(seed=-1), ValueError, "seed must be an integer >= 0"),
    (dict(seed=True), ValueError, "seed must be an integer >= 0"),
    (dict(images=0), ValueError, "images must be an integer >= 1"),
    (dict(amplitude=0.0), ValueError, "amplitude must be a finite number > 0"),
    (dict(amplitude=float("inf")), ValueError, "amplitude must be a finite number > 0"),
])
def test_bad_arguments_get_one_clear_error(small_vgg, scenes, change, error, message):
    given = {"model": small_vgg(0), "x": scenes, **change}
    with pytest.raises(error, match=message):
        trigger_search(**given)


def test_a_model_in_training_mode_or_with_non_finite_weights_is_refused(small_vgg, scenes):
    with pytest.raises(ValueError, match="training mode"):
        trigger_score(small_vgg(0).train(), scenes)
    bad = small_vgg(0)
    with torch.no_grad():
        bad.classifier[0].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"classifier\.0\.weight"):
        trigger_score(bad, scenes)


def test_the_study_s_triggers_are_unlike_the_smiley_and_its_bad_arguments_fail_early(tmp_path, capsys):
    from lie_cam.cli import main
    from lie_cam.data import smiley
    from lie_cam.experiments.trigger_study import run_trigger_study, variant_triggers

    triggers = variant_triggers()
    sides = {t.shape[-1] for t in triggers.values()}
    assert len(triggers) >= 12 and len(sides) >= 8
    assert sum(t.shape == smiley().shape and torch.equal(t, smiley()) for t in triggers.values()) == 1
    assert all(0 <= float(t.min()) and float(t.max()) <= 1 and float(t.std()) > 0 for t in triggers.values())
    with pytest.raises(ValueError, match="n_images must be a positive integer"):
        run_trigger_study(tmp_path / "out", zoo=tmp_path / "zoo", n_images=0)
    assert not (tmp_path / "out").exists() and not (tmp_path / "zoo").exists()
    assert main(["trigger-study", "--out", str(tmp_path / "out"), "--images", "0"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
