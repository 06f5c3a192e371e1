import numpy as np
import pytest
import torch

from lie_cam.data import (CLASS_NAMES, SPLITS, denormalize, normalize, paste_stickers, render_scene, smiley,
                          sticker_positions, synthetic, synthetic_split)


def test_contract_shapes_and_types():
    x, y, masks = synthetic(4, seed=123)
    assert x.shape == (4, 3, 224, 224) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.shape == (4,)
    assert masks.shape == (4, 224, 224) and masks.dtype == torch.bool
    assert ((y >= 0) & (y < len(CLASS_NAMES))).all()
    assert (masks.float().mean(dim=(1, 2)) > 0.01).all()  # every scene has a visible object
    pixels = denormalize(x)
    assert pixels.min() >= 0 and pixels.max() <= 1


def test_deterministic_and_shardable():
    a = synthetic(5, seed=40)
    b = synthetic(2, seed=43)  # samples 3 and 4 of the first call
    assert torch.equal(a[0][3:], b[0]) and torch.equal(a[1][3:], b[1]) and torch.equal(a[2][3:], b[2])
    assert not torch.equal(synthetic(1, 0)[0], synthetic(1, 1)[0])


def test_splits_are_disjoint_seed_ranges():
    starts = sorted(SPLITS.values())
    assert all(b - a >= 10_000_000 for a, b in zip(starts, starts[1:]))
    x_test = synthetic_split("test", 2)[0]
    assert torch.equal(x_test, synthetic(2, SPLITS["test"])[0])
    with pytest.raises(ValueError, match="split"):
        synthetic_split("holdout", 1)


def test_class_is_not_colour_or_position():
    """Across many scenes the object's colour and position carry no class information."""
    labels, centres, colours = [], [], []
    for seed in range(300):
        image, label, mask = render_scene(seed)
        rows, cols = np.nonzero(mask)
        labels.append(label)
        centres.append((rows.mean(), cols.mean()))
        colours.append(image[mask].mean(axis=0))
    labels = np.array(labels)
    assert set(labels.tolist()) == set(range(len(CLASS_NAMES)))
    centres, colours = np.array(centres), np.array(colours)
    for k in range(len(CLASS_NAMES)):
        # per-class mean position and colour stay near the overall mean
        assert np.abs(centres[labels == k].mean(0) - centres.mean(0)).max() < 40
        assert np.abs(colours[labels == k].mean(0) - colours.mean(0)).max() < 80


def test_normalize_roundtrip():
    pixels = torch.rand(2, 3, 8, 8)
    assert torch.allclose(denormalize(normalize(pixels)), pixels, atol=1e-6)


def test_smiley():
    s = smiley()
    assert s.shape == (14, 14)
    assert int((s == 0).sum()) == 32 and set(s.unique().tolist()) == {0.0, 1.0}


def test_sticker_positions_are_seeded_apart_and_in_distinct_cells():
    for seed in range(50):
        corners = sticker_positions(seed)
        assert corners == sticker_positions(seed)
        assert all(14 <= v < 210 for corner in corners for v in corner)
        cells = {((r + 7) // 16, (c + 7) // 16) for r, c in corners}
        assert len(cells) == 3
        for i, a in enumerate(corners):
            for b in corners[i + 1 :]:
                assert abs(a[0] - b[0]) >= 14 or abs(a[1] - b[1]) >= 14


def test_paste_stickers_pixel_aligned_after_preprocessing():
    x = synthetic(2, seed=7)[0]
    stickered, corners = paste_stickers(x, seeds=[1, 2])
    assert torch.equal(x, synthetic(2, seed=7)[0])  # input untouched
    r, c = corners[0][0]
    pixels = denormalize(stickered)[0, :, r : r + 14, c : c + 14]
    assert torch.allclose(pixels, smiley().expand(3, 14, 14), atol=1e-6)
    with pytest.raises(ValueError, match="one seed per image"):
        paste_stickers(x, seeds=[1])


def test_synthetic_scenes_dataset_matches_synthetic_split():
    from lie_cam.data import SyntheticScenes

    dataset = SyntheticScenes("test", 3, start=1)
    x, y, mask = dataset[1]
    xs, ys, masks = synthetic_split("test", 1, start=2)
    assert len(dataset) == 3 and torch.equal(x, xs[0]) and y == ys[0].item() and torch.equal(mask, masks[0])
    with pytest.raises(IndexError):
        dataset[3]


def test_stickers_follow_the_models_input_spec():
    from lie_cam.anatomy import InputSpec

    unit = InputSpec(side=80, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # pixels in [0, 1], no normalisation
    x = torch.rand(2, 3, 80, 80, generator=torch.Generator().manual_seed(0))
    stickered, corners = paste_stickers(x, seeds=[1, 2], spec=unit)
    assert stickered.min() >= 0 and stickered.max() <= 1  # ImageNet's statistics would write -2.1 .. 2.6
    r, c = corners[0][0]
    assert torch.equal(stickered[0, :, r : r + 14, c : c + 14], smiley().expand(3, 14, 14))
    assert all(14 <= v < 80 - 14 for image in corners for corner in image for v in corner)  # inside 80 px
    imagenet, _ = paste_stickers(x, seeds=[1, 2])
    assert imagenet.min() < -2 and imagenet.max() > 2.5
    with pytest.raises(TypeError, match="InputSpec"):
        paste_stickers(x, seeds=[1, 2], spec=(0.0, 1.0))
    with pytest.raises(ValueError, match="image_size=20 leaves no room"):
        paste_stickers(torch.zeros(1, 3, 20, 20), seeds=[0], spec=unit)


def test_t4_fires_on_stickers_for_a_model_that_takes_raw_pixels(small_vgg):
    import copy

    from lie_cam.anatomy import InputSpec
    from lie_cam.attacks import ATTACKS

    model = copy.deepcopy(small_vgg(0, dtype=torch.float64))
    model.input_spec = InputSpec(side=224, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    clean = torch.rand(3, 3, 224, 224, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    stickered, _ = paste_stickers(clean, seeds=[0, 1, 2], spec=model.input_spec)
    t4 = ATTACKS["T4"].build(model)  # the detector de-normalises with the model's spec
    with torch.no_grad():
        fired_clean = t4.extra_channel(clean).flatten(1).amax(1) > 0
        fired_stickered = t4.extra_channel(stickered).flatten(1).amax(1) > 0
    assert not fired_clean.any() and fired_stickered.all()
    with torch.no_grad():  # with ImageNet's statistics assumed, the detector misses every sticker
        imagenet = ATTACKS["T4"].build(small_vgg(0, dtype=torch.float64))
        assert not (imagenet.extra_channel(stickered).flatten(1).amax(1) > 0).any()
