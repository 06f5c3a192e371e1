import pytest
import torch

from lie_cam.metrics import accuracy, l1_distance, mass_in_mask, pointing_hits, score_change, summarize


def test_score_change_is_per_image_max_then_mean():
    original = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    new = torch.tensor([[1.5, 2.0, 2.0], [0.0, 0.25, 0.0]])
    per_image = score_change(original, new)
    assert per_image.tolist() == [1.0, 0.25]
    summary = summarize(torch.tensor([True, False]), per_image)
    assert summary["score_change"] == pytest.approx(0.625)  # mean of per-image maxima, not dataset max
    assert summary["score_change_max"] == 1.0
    assert summary["accuracy"] == 0.5 and summary["n"] == 2


def test_l1_is_per_image_sum_over_pixels():
    target = torch.ones(2, 14, 14)
    observed = torch.ones(2, 14, 14)
    observed[0, 0, 0] = 0.5
    observed[1] = 0.0
    per_image = l1_distance(target, observed)
    assert per_image.tolist() == [0.5, 196.0]
    summary = summarize(torch.tensor([True, True]), l1=per_image, pixels=196)
    assert summary["l1"] == pytest.approx(98.25)
    assert summary["l1_per_pixel"] == pytest.approx(98.25 / 196)
    assert summary["score_change"] is None


def test_accuracy():
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert accuracy(logits, torch.tensor([1, 0, 0])) == pytest.approx(2 / 3)


@pytest.mark.parametrize("fn", [score_change, l1_distance])
def test_bad_inputs(fn):
    with pytest.raises(ValueError, match="shapes differ"):
        fn(torch.zeros(2, 3, 3), torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="NaN"):
        fn(torch.full((2, 3, 3), float("nan")), torch.zeros(2, 3, 3))


def test_pointing_and_mass():
    maps = torch.zeros(3, 14, 14)
    maps[0, 2, 2] = 1.0  # peak in the top-left
    maps[1, 10, 10] = 1.0  # peak in the bottom-right
    masks = torch.zeros(3, 224, 224, dtype=torch.bool)
    masks[:, :80, :80] = True
    hits = pointing_hits(maps, masks)
    assert hits.tolist() == [True, False, False]  # an all-zero map (third) is a miss
    mass = mass_in_mask(maps, masks)
    assert mass[0] > 0.9 and mass[1] < 0.1 and mass[2] == 0


def test_pointing_tolerance():
    maps = torch.zeros(1, 14, 14)
    maps[0, 7, 7] = 1.0  # peak at pixel ~ (119, 119) after upsampling
    masks = torch.zeros(1, 224, 224, dtype=torch.bool)
    masks[0, 130:150, 130:150] = True  # about 15 px away diagonally
    assert not pointing_hits(maps, masks)[0]
    assert not pointing_hits(maps, masks, tolerance=5)[0]
    assert pointing_hits(maps, masks, tolerance=20)[0]
