"""DetectionDataset and collate: targets per kind, K = 0 normal images, seeded augmentation, DataLoader."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from wsbus.data import DataError, DetectionDataset, Sample, collate, make_phantom, train_transforms


@pytest.fixture(scope="module")
def samples():
    data = make_phantom(12, seed=1, size=64)
    assert {s.image_label for s in data} == {0, 1, 2}
    return data


def test_strong_targets(samples):
    ds = DetectionDataset(samples, kind="strong")
    assert len(ds) == 12
    for i, s in enumerate(samples):
        image, target = ds[i]
        assert image.dtype == torch.float32 and image.shape == (1, 64, 64)
        torch.testing.assert_close(image[0], torch.from_numpy(s.image).float() / 255)
        assert set(target) == {"boxes", "labels", "image_label", "index"}
        assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
        assert target["image_label"].dtype == torch.int64 and target["image_label"].ndim == 0
        assert int(target["image_label"]) == s.image_label and target["index"] == i
        np.testing.assert_array_equal(target["boxes"].numpy(), s.boxes)
        if s.image_label == 0:  # a normal image: strong with K = 0
            assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)


def test_weak_targets_have_no_boxes(samples):
    ds = DetectionDataset(samples, kind="weak")
    for i, s in enumerate(samples):
        image, target = ds[i]
        assert set(target) == {"image_label", "index"} and int(target["image_label"]) == s.image_label
    weak_only = [s.as_weak() for s in samples]
    assert set(DetectionDataset(weak_only, kind="weak")[0][1]) == {"image_label", "index"}


def test_eval_kind_and_checks(samples):
    mixed = [samples[0], samples[1].as_weak()]
    ds = DetectionDataset(mixed, kind="eval")
    assert "boxes" in ds[0][1] and "boxes" not in ds[1][1]
    with pytest.raises(DataError, match=r"sample 'ph1-00001' has no boxes"):
        DetectionDataset(mixed, kind="strong")
    with pytest.raises(ValueError, match="kind"):
        DetectionDataset(samples, kind="train")
    with pytest.raises(TypeError, match="item 0"):
        DetectionDataset([object()])
    with pytest.raises(IndexError):
        DetectionDataset(samples)[12]
    assert DetectionDataset(samples)[-1][1]["index"] == 11


def test_seeded_augmentation(samples):
    ds = DetectionDataset(samples, kind="strong", transforms=train_transforms(), seed=4)
    a_img, a_t = ds[(3, 99)]
    b_img, b_t = ds[(3, 99)]
    c_img, _ = ds[(3, 100)]
    assert torch.equal(a_img, b_img) and torch.equal(a_t["boxes"], b_t["boxes"])
    assert not torch.equal(a_img, c_img)
    other_seed = DetectionDataset(samples, kind="strong", transforms=train_transforms(), seed=5)
    assert not torch.equal(a_img, other_seed[(3, 99)][0])
    assert a_img.min() >= 0 and a_img.max() <= 1 and len(a_t["boxes"]) == len(samples[3].boxes)


def test_collate_and_dataloader(samples):
    ds = DetectionDataset(samples, kind="strong", transforms=train_transforms())
    images, targets = collate([ds[0], ds[1], ds[2]])
    assert len(images) == len(targets) == 3 and [t["index"] for t in targets] == [0, 1, 2]
    loader = DataLoader(ds, batch_size=5, collate_fn=collate)
    batches = list(loader)
    assert [len(b[0]) for b in batches] == [5, 5, 2]
    assert all(img.shape[0] == 1 and img.dtype == torch.float32 for img, _ in zip(*batches[0]))


def test_rgb_images_keep_three_channels():
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[..., 1] = 255
    s = Sample(rgb, np.array([[1, 1, 5, 5]], np.float32), np.array([1]), 1, "rgb")
    image, _ = DetectionDataset([s])[0]
    assert image.shape == (3, 10, 12) and float(image[1].mean()) == 1.0 and float(image[0].mean()) == 0.0


def test_min_extent_widens_only_squashed_boxes_inside_the_image():
    from wsbus.data.dataset import min_extent

    boxes = torch.tensor([[226.5, 308.0, 264.0, 308.0],   # zero height at the bottom edge
                          [0.0, 0.0, 0.2, 5.0],            # 0.2 px wide at the left edge
                          [10.0, 10.0, 20.0, 20.0]])       # fine: untouched
    out = min_extent(boxes, (308, 300))
    assert out.tolist() == [[226.5, 307.0, 264.0, 308.0], [0.0, 0.0, 1.0, 5.0], [10.0, 10.0, 20.0, 20.0]]
    assert torch.equal(min_extent(boxes[2:], (308, 300)), boxes[2:])
