"""Box-aware augmentation: hand-computed flips, rotations that keep covering the mass, crops that keep boxes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes

from wsbus.data import GRAY_MEAN, GRAY_STD, eval_transforms, train_transforms
from wsbus.data.transforms import RandomBrightnessShift, RandomMarginCrop, apply


def _img(h=40, w=100, value=None, seed=0):
    if value is not None:
        arr = torch.full((1, h, w), value, dtype=torch.uint8)
    else:
        arr = torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (1, h, w), dtype=np.uint8))
    return tv_tensors.Image(arr)


def _boxes(rows, h, w):
    return tv_tensors.BoundingBoxes(torch.tensor(rows, dtype=torch.float32), format="XYXY", canvas_size=(h, w))


def test_constants():
    assert GRAY_MEAN == pytest.approx(68.274 / 255) and GRAY_STD == pytest.approx(52.802 / 255)


def test_flip_matches_hand_computed_box():
    t = train_transforms(flip=1.0, degrees=0.0, crop=0.0, brightness=0.0, contrast=(1.0, 1.0))
    image = _img()
    out, target = t(image, {"boxes": _boxes([[10, 20, 30, 40]], 40, 100), "labels": torch.tensor([2])})
    # x -> W - x: (10, 20, 30, 40) in a 100-wide image becomes (70, 20, 90, 40)
    assert target["boxes"].tolist() == [[70.0, 20.0, 90.0, 40.0]]
    assert target["labels"].tolist() == [2]
    torch.testing.assert_close(out.as_subclass(torch.Tensor), torch.flip(image.float() / 255, dims=[-1]),
                               atol=1e-5, rtol=0)


def test_rotation_keeps_covering_the_mass():
    h, w = 80, 90
    mask = torch.zeros(1, h, w, dtype=torch.uint8)
    mask[0, 30:50, 20:60] = 1
    image = tv_tensors.Image(mask * 200 + 20)
    t = train_transforms(flip=0.0, crop=0.0, brightness=0.0, contrast=(1.0, 1.0), degrees=5.0)
    widened = 0
    for seed in range(12):
        target = {"boxes": _boxes([[20, 30, 60, 50]], h, w), "mask": tv_tensors.Mask(mask)}
        out, target = apply(t, image, target, seed=seed)
        rotated = target["mask"].as_subclass(torch.Tensor).bool()
        mass = masks_to_boxes(rotated)[0] + torch.tensor([0, 0, 1, 1])  # pixel edges
        box = target["boxes"][0]
        # covered up to the discretisation of the nearest-neighbour mask (a pixel is in when its centre is)
        assert box[0] <= mass[0] + 1 and box[1] <= mass[1] + 1
        assert box[2] >= mass[2] - 1 and box[3] >= mass[3] - 1
        widened += bool((box[2] - box[0]) > 40.5)
    assert widened > 6  # non-zero angles enlarge the box (the enclosing box of the rotated one)


def test_outputs_stay_in_unit_range_and_keep_every_box():
    t = train_transforms()
    for value in (0, 255, None):
        for seed in range(10):
            image = _img(value=value, seed=seed)
            target = {"boxes": _boxes([[0, 0, 8, 6], [90, 30, 100, 40], [40, 10, 60, 30]], 40, 100),
                      "labels": torch.tensor([1, 1, 2])}
            out, target = apply(t, image, target, seed=seed)
            out = out.as_subclass(torch.Tensor)
            assert out.dtype == torch.float32 and out.min() >= 0 and out.max() <= 1
            b = target["boxes"].as_subclass(torch.Tensor)
            assert b.shape == (3, 4) and torch.all(b[:, 2] > b[:, 0]) and torch.all(b[:, 3] > b[:, 1])
            hh, ww = out.shape[-2:]
            assert torch.all(b[:, :2] >= 0) and torch.all(b[:, 2] <= ww) and torch.all(b[:, 3] <= hh)


def test_crop_never_cuts_a_box_by_more_than_half():
    crop = RandomMarginCrop(max_fraction=0.3)  # aggressive crop: the box limits must hold it back
    h, w = 50, 60
    rows = [[2, 3, 10, 13], [52, 40, 60, 50]]
    for seed in range(30):
        torch.manual_seed(seed)
        image, boxes = crop(_img(h, w), _boxes(rows, h, w))
        kept = boxes.as_subclass(torch.Tensor)
        orig = torch.tensor(rows, dtype=torch.float32)
        assert torch.all(kept[:, 2] - kept[:, 0] >= 0.5 * (orig[:, 2] - orig[:, 0]) - 1e-4)
        assert torch.all(kept[:, 3] - kept[:, 1] >= 0.5 * (orig[:, 3] - orig[:, 1]) - 1e-4)
        assert image.shape[-2:] == boxes.canvas_size
    # without boxes the crop takes up to max_fraction per side
    torch.manual_seed(0)
    sizes = {tuple(crop(_img(h, w)).shape[-2:]) for _ in range(10)}
    assert min(s[0] for s in sizes) < h - 10


def test_same_seed_same_output_and_rng_untouched():
    t = train_transforms()
    image = _img(seed=3)
    target = {"boxes": _boxes([[10, 10, 40, 30]], 40, 100), "labels": torch.tensor([1])}
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = apply(t, image, dict(target), seed=7)
    assert torch.equal(torch.get_rng_state(), state)  # fork_rng restored the caller's generator
    b = apply(t, image, dict(target), seed=7)
    c = apply(t, image, dict(target), seed=8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
    assert not torch.equal(a[0], c[0]) or not torch.equal(a[1]["boxes"], c[1]["boxes"])


def test_weak_samples_pass_through():
    t = train_transforms()
    out, target = apply(t, _img(seed=1), {"image_label": torch.tensor(2), "index": 5}, seed=0)
    assert set(target) == {"image_label", "index"} and target["index"] == 5
    assert out.dtype == torch.float32 and out.ndim == 3


@pytest.mark.parametrize("make", [train_transforms, eval_transforms])
def test_plain_grayscale_array_with_labels(make):
    """An ``H x W`` numpy image with a labels tensor: the labels are not taken for the image (v2.ToImage's
    heuristic picks the first plain tensor when no input is image-typed), and the result equals that of the
    same image given as a ``tv_tensors.Image``."""
    array = np.random.default_rng(4).integers(0, 256, (40, 100), dtype=np.uint8)
    target = {"boxes": _boxes([[10, 10, 40, 30]], 40, 100), "labels": torch.tensor([2])}
    out, got = apply(make(), array, dict(target), seed=3)
    ref, want = apply(make(), tv_tensors.Image(torch.from_numpy(array)[None]), dict(target), seed=3)
    assert out.shape == ref.shape and out.shape[0] == 1 and out.dtype == torch.float32
    torch.testing.assert_close(out.as_subclass(torch.Tensor), ref.as_subclass(torch.Tensor), rtol=0, atol=0)
    assert type(got["labels"]) is torch.Tensor and got["labels"].tolist() == [2]
    assert got["boxes"].tolist() == want["boxes"].tolist()
    weak_out, weak = apply(make(), array, {"image_label": torch.tensor(1)}, seed=3)  # a weak sample: 0-d label
    assert weak_out.shape[0] == 1 and type(weak["image_label"]) is torch.Tensor and weak["image_label"].item() == 1


def test_eval_transforms_only_convert():
    image = _img(seed=2)
    out, target = eval_transforms()(image, {"boxes": _boxes([[1, 2, 3, 4]], 40, 100)})
    torch.testing.assert_close(out.as_subclass(torch.Tensor), image.float() / 255)
    assert target["boxes"].tolist() == [[1, 2, 3, 4]]


def test_brightness_shift_is_additive_and_checks_dtype():
    t = RandomBrightnessShift(0.2)
    image = tv_tensors.Image(torch.full((1, 4, 4), 0.5))
    torch.manual_seed(0)
    out = t(image)
    delta = float(out[0, 0, 0] - 0.5)
    assert abs(delta) <= 0.2 and torch.allclose(out, torch.full_like(out, 0.5 + delta))
    with pytest.raises(TypeError, match="float image"):
        t(_img())
