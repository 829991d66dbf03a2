"""From Sample records to tensors: whole images, mass crops (roi_align), label budgets, grouped splits."""
import numpy as np
import pytest
import torch

from wsbus.companion import (image_tensor, images_to_tensor, labels_tensor, load_samples, mass_crops, random_crops,
                             region_crops, stratified_split, stratified_subset)
from wsbus.data import DataError, Sample


def _sample(i, label, box=None, value=200, shape=(80, 100), patient=None):
    img = np.full(shape, 20, dtype=np.uint8)
    if box is not None:
        x1, y1, x2, y2 = box
        img[y1:y2, x1:x2] = value
        return Sample(img, np.array([box], np.float32), np.array([label]), label, f"s{i}", patient)
    return Sample(img, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), 0, f"s{i}", patient)


def test_image_tensor_grayscale_and_rgb():
    s = _sample(0, 1, (10, 20, 30, 40))
    t = image_tensor(s, size=40)
    assert t.shape == (1, 40, 40) and t.dtype == torch.float32
    assert 0.0 <= float(t.min()) and float(t.max()) <= 1.0
    rgb = np.stack([s.image] * 3, axis=2)
    t_rgb = image_tensor(Sample(rgb, s.boxes, s.labels, 1, "rgb"), size=40)
    torch.testing.assert_close(t_rgb, t, atol=1 / 255, rtol=0)  # equal channels -> the same gray
    x = images_to_tensor([s, _sample(1, 0)], size=16)
    assert x.shape == (2, 1, 16, 16)
    assert labels_tensor([s, _sample(1, 0)]).tolist() == [1, 0]
    with pytest.raises(ValueError, match="empty"):
        images_to_tensor([])


def test_mass_crop_of_the_box_is_the_box():
    # A 20x20 bright square: with context 0 the crop window is exactly the box. Bins are 1.25 px wide with two
    # bilinear samples each; the outermost samples sit 0.31 px inside the box, i.e. 0.19 px (index units) from
    # the centre of the dark neighbour pixel's half-pixel: the border bins blend in 0.1875 / 2 of the outside.
    s = _sample(0, 2, (40, 30, 60, 50), value=200)
    crops = mass_crops([s], size=16, context=0.0)
    assert len(crops) == 1 and crops.images.shape == (1, 1, 16, 16)
    c = crops.images[0, 0]
    torch.testing.assert_close(c[1:-1, 1:-1], torch.full((14, 14), 200 / 255))
    edge = (200 - 0.1875 / 2 * 180) / 255
    torch.testing.assert_close(c[0, 5], torch.tensor(edge))
    torch.testing.assert_close(c[5, -1], torch.tensor(edge))
    assert crops.labels.tolist() == [2] and crops.ids == ["s0"] and crops.sample_index.tolist() == [0]
    torch.testing.assert_close(crops.windows, torch.tensor([[40.0, 30.0, 60.0, 50.0]]))
    # with context 0.5 the window is twice as wide: the square fills the central half of the crop
    c = mass_crops([s], size=16, context=0.5).images[0, 0]
    torch.testing.assert_close(c[5:11, 5:11], torch.full((6, 6), 200 / 255))
    torch.testing.assert_close(c[0, 0], torch.tensor(20 / 255))


def test_crop_window_is_square_and_slides_inside_the_image():
    s = _sample(0, 1, (0, 0, 30, 10))  # a wide box in the corner
    w = mass_crops([s], size=8, context=0.25).windows[0]
    assert float(w[2] - w[0]) == pytest.approx(45.0) and float(w[3] - w[1]) == pytest.approx(45.0)
    assert float(w[0]) == 0.0 and float(w[1]) == 0.0  # slid inside instead of padded with zeros


def test_normals_give_no_crop_and_weak_samples_are_an_error():
    s = [_sample(0, 0), _sample(1, 1, (10, 10, 30, 30))]
    crops = mass_crops(s, size=8)
    assert len(crops) == 1 and crops.sample_index.tolist() == [1]
    assert len(crops.subset(torch.tensor([True]))) == 1
    assert len(mass_crops([_sample(0, 0)], size=8)) == 0
    weak = s[1].as_weak()
    with pytest.raises(DataError, match="'s1'.*weak"):
        mass_crops([s[0], weak])


def test_stratified_subset_is_balanced_and_deterministic():
    labels = torch.tensor([0] * 10 + [1] * 10 + [2] * 2)
    def counts(n):
        return torch.bincount(labels[stratified_subset(labels, n, seed=0)], minlength=3).tolist()

    assert counts(6) == [2, 2, 2]
    # class 2 has only two items: the shortfall comes from the others, the remainder to the first classes
    assert counts(9) == [4, 3, 2]
    assert counts(12) == [5, 5, 2]
    assert torch.equal(stratified_subset(labels, 12, seed=3), stratified_subset(labels, 12, seed=3))
    assert len(set(stratified_subset(labels, 22, seed=0).tolist())) == 22
    with pytest.raises(ValueError, match="cannot draw"):
        stratified_subset(labels, 23)


def test_stratified_split_keeps_patients_together():
    samples = []
    for p in range(12):
        label = p % 3
        for k in range(2):  # two images per patient
            box = None if label == 0 else (10, 10, 30, 30)
            samples.append(_sample(2 * p + k, label, box, patient=f"P{p}"))
    train, test = stratified_split(samples, test_fraction=0.25, seed=0)
    assert sorted(train.tolist() + test.tolist()) == list(range(24))
    pt_train = {samples[i].patient for i in train.tolist()}
    pt_test = {samples[i].patient for i in test.tolist()}
    assert not pt_train & pt_test
    assert {samples[i].image_label for i in test.tolist()} == {0, 1, 2}  # every class on both sides
    assert {samples[i].image_label for i in train.tolist()} == {0, 1, 2}
    assert len(test) == 6


def test_region_crops_borrow_mass_windows_for_normal_images():
    s = [_sample(0, 1, (10, 20, 30, 40)), _sample(1, 0), _sample(2, 2, (50, 10, 90, 50)), _sample(3, 0)]
    crops = region_crops(s, size=16, context=0.0, normals_per_image=2, seed=0)
    assert crops.labels.tolist() == [1, 0, 0, 2, 0, 0]
    assert crops.sample_index.tolist() == [0, 1, 1, 2, 3, 3]
    # every normal window is one of the two mass windows (same relative place and size: all images are 100 x 80)
    masses = {tuple(w) for w in crops.windows[crops.labels > 0].tolist()}
    for w in crops.windows[crops.labels == 0].tolist():
        assert tuple(w) in masses
    # the normal images are uniform (20): their crops are flat, the mass crops are bright inside
    torch.testing.assert_close(crops.images[crops.labels == 0], torch.full((4, 1, 16, 16), 20 / 255))
    assert torch.equal(region_crops(s, size=16, seed=3).windows, region_crops(s, size=16, seed=3).windows)
    assert len(region_crops(s, size=16, normals_per_image=0)) == 2
    with pytest.raises(ValueError, match="borrow"):
        region_crops([_sample(0, 0)], size=16)
    with pytest.raises(DataError, match="'s0'.*weak"):
        region_crops([s[0].as_weak()], size=16)


def test_random_crops_need_no_annotation():
    weak = [_sample(0, 1, (10, 20, 30, 40)).as_weak(), _sample(1, 0).as_weak()]
    x = random_crops(weak, per_image=3, size=16, side=(0.2, 0.5), seed=0)
    assert x.shape == (6, 1, 16, 16) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert torch.equal(x, random_crops(weak, per_image=3, size=16, side=(0.2, 0.5), seed=0))
    assert not torch.equal(x, random_crops(weak, per_image=3, size=16, side=(0.2, 0.5), seed=1))
    with pytest.raises(ValueError, match="side"):
        random_crops(weak, side=(0.5, 1.5))


def test_load_samples_phantom_and_folder_specs():
    a = load_samples("phantom", n=4, seed=2, size=64, scanner="B")
    b = load_samples("phantom:4", seed=2, size=64, scanner="B")
    assert len(a) == 4 and all(s.image.shape == (64, 64) for s in a)
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="do not apply"):
        load_samples("busi:/nonexistent", scanner="B")
    with pytest.raises(ValueError, match="unknown data source"):
        load_samples("imagenet:/x")
