"""COCO in and out (wsbus.data.coco): round trips, segmentation boxes, categories by name, bad files, `coco:` specs."""
from __future__ import annotations

import json

import numpy as np
import pytest

from wsbus.data import DataError, Sample, load_coco, make_phantom, to_coco, write_coco
from wsbus.data.coco import load_coco_source
from wsbus.data.sources import load_source, parse_source


def assert_same_samples(got, want):
    assert [s.id for s in got] == [s.id for s in want]
    for g, w in zip(got, want):
        assert g.patient == w.patient and g.image_label == w.image_label, g.id
        assert g.image.dtype == np.uint8 and np.array_equal(g.image, w.image), g.id
        assert g.is_strong == w.is_strong, g.id
        if w.is_strong:
            assert g.boxes.dtype == np.float32 and np.array_equal(g.boxes, w.boxes), g.id
            assert np.array_equal(g.labels, w.labels), g.id


def mixed_samples(gray_image):
    """Fractional boxes, a normal image, a weak image, mixed labels, ids unsafe as file names, no patient."""
    return [
        Sample(gray_image(40, 50, 1), np.array([[1.25, 2.5, 30.1, 33.3]], np.float32), np.array([1]), 1, "a/b", "P1"),
        Sample(gray_image(40, 50, 2), np.zeros((0, 4), np.float32), np.zeros(0, np.int64), 0, "normal one", None),
        Sample(gray_image(30, 20, 3), None, None, 2, "weak:1", "P2"),
        Sample(gray_image(64, 48, 4), np.array([[0, 0, 10, 10], [20.5, 30, 48, 64]], np.float32), np.array([1, 2]),
               2, "mixed", "P1"),
    ]


def test_round_trip_phantom_is_exact(tmp_path):
    samples = make_phantom(12, size=48, seed=1)
    path = write_coco(samples, tmp_path / "coco")
    assert path == tmp_path / "coco" / "annotations.json"
    assert sorted(p.name for p in (tmp_path / "coco" / "images").iterdir()) == sorted(f"{s.id}.png" for s in samples)
    assert_same_samples(load_coco(path), samples)   # image_dir defaults to the JSON's folder ... with images/
    assert_same_samples(load_source(f"coco:{tmp_path / 'coco'}"), samples)
    assert_same_samples(load_source(f"coco:{path}"), samples)


def test_round_trip_of_unusual_samples(tmp_path, gray_image):
    samples = mixed_samples(gray_image)
    coco = to_coco(samples)
    assert set(coco) == {"images", "annotations", "categories"}
    assert [c["name"] for c in coco["categories"]] == ["benign", "malignant"]
    by_id = {im["id"]: im for im in coco["images"]}
    assert by_id[1]["sample_id"] == "a/b" and "/" not in by_id[1]["file_name"]
    assert by_id[3]["weak"] is True and by_id[3]["image_label"] == "malignant"
    assert "sample_id" not in by_id[2] and "patient" not in by_id[2]
    assert [a["image_id"] for a in coco["annotations"]] == [1, 4, 4]      # none for the normal and the weak image
    assert coco["annotations"][0]["bbox"] == pytest.approx([1.25, 2.5, 30.1 - 1.25, 33.3 - 2.5])
    json.dumps(coco)                                                        # plain JSON data
    write_coco(samples, tmp_path)
    assert_same_samples(load_coco(tmp_path / "annotations.json", tmp_path / "images"), samples)
    # from the dict itself, after a trip through JSON text
    assert_same_samples(load_coco(json.loads(json.dumps(coco)), tmp_path / "images"), samples)


def test_file_names_stay_unique(gray_image):
    samples = [Sample(gray_image(8, 8, k), None, None, 1, i) for k, i in enumerate(["x?", "x*", "X?"])]
    names = [im["file_name"] for im in to_coco(samples)["images"]]
    assert len({n.lower() for n in names}) == 3


def _hand_written(tmp_path, write_image, gray_image, annotations, categories=None, images=None):
    write_image(tmp_path / "img1.png", gray_image(40, 60, 1))
    write_image(tmp_path / "img2.png", gray_image(40, 60, 2))
    data = {"images": images or [{"id": 7, "file_name": "img1.png", "width": 60, "height": 40, "patient_id": "p9"},
                                 {"id": 8, "file_name": "img2.png", "width": 60, "height": 40}],
            "annotations": annotations,
            "categories": categories or [{"id": 3, "name": "Malignant"}, {"id": 5, "name": "benign"},
                                         {"id": 9, "name": "background"}]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


def test_hand_written_file_with_segmentations(tmp_path, write_image, gray_image):
    from pycocotools import mask as mask_utils

    m = np.zeros((40, 60), np.uint8, order="F")
    m[5:15, 20:41] = 1
    rle = mask_utils.encode(m)
    rle["counts"] = rle["counts"].decode("ascii")
    anns = [
        {"id": 1, "image_id": 7, "category_id": 3, "bbox": [10, 5, 20, 15]},
        {"id": 2, "image_id": 7, "category_id": 3, "segmentation": [[2, 2, 8, 2, 8, 9, 2, 9]]},
        {"id": 3, "image_id": 8, "category_id": 5, "segmentation": rle},
        {"id": 4, "image_id": 8, "category_id": 9, "bbox": [0, 0, 5, 5]},          # background: skipped
    ]
    samples = load_coco(_hand_written(tmp_path, write_image, gray_image, anns))
    a, b = samples
    assert (a.id, a.patient, a.image_label, b.id, b.patient, b.image_label) == ("img1", "p9", 2, "img2", None, 1)
    assert a.boxes[0].tolist() == [10, 5, 30, 20]
    assert a.boxes[1].tolist() == pytest.approx([2, 2, 8, 9], abs=1.0)           # the polygon's rasterised extent
    assert b.boxes.tolist() == [[20, 5, 41, 15]] and b.labels.tolist() == [1]     # the RLE's exact pixel box


def test_image_without_annotations_is_normal(tmp_path, write_image, gray_image):
    samples = load_coco(_hand_written(tmp_path, write_image, gray_image, []))
    assert [(s.image_label, len(s.boxes)) for s in samples] == [(0, 0), (0, 0)]


def test_unknown_category_is_named(tmp_path, write_image, gray_image):
    path = _hand_written(tmp_path, write_image, gray_image, [],
                         categories=[{"id": 1, "name": "benign"}, {"id": 2, "name": "cyst"}])
    with pytest.raises(DataError, match=r"instances\.json.*unknown category name 'cyst'"):
        load_coco(path)
    samples = load_coco(path, categories={"cyst": "benign"})        # mapped by name
    assert len(samples) == 2


@pytest.mark.parametrize("anns, message", [
    ([{"id": 1, "image_id": 99, "category_id": 3, "bbox": [0, 0, 5, 5]}], "image_id 99 is not in 'images'"),
    ([{"id": 1, "image_id": 7, "category_id": 4, "bbox": [0, 0, 5, 5]}], "category_id 4 is not in 'categories'"),
    ([{"id": 1, "image_id": 7, "category_id": 3, "bbox": [0, 0, 0, 5]}], "empty or negative bbox"),
    ([{"id": 1, "image_id": 7, "category_id": 3, "bbox": [50, 0, 20, 5]}], "outside the 60x40 image"),
    ([{"id": 1, "image_id": 7, "category_id": 3}], "neither a 'bbox' nor a 'segmentation'"),
    ([{"id": 1, "image_id": 7, "category_id": 3, "segmentation": [[1, 2]]}], "cannot read the segmentation"),
])
def test_bad_annotations_are_named(tmp_path, write_image, gray_image, anns, message):
    with pytest.raises(DataError, match=message) as info:
        load_coco(_hand_written(tmp_path, write_image, gray_image, anns))
    assert "instances.json" in str(info.value)


def test_bad_images_and_files(tmp_path, write_image, gray_image):
    path = _hand_written(tmp_path, write_image, gray_image, [], images=[
        {"id": 1, "file_name": "img1.png", "width": 61, "height": 40}])
    with pytest.raises(DataError, match=r"img1\.png: the image is 60x40 but .*61x40"):
        load_coco(path)
    path = _hand_written(tmp_path, write_image, gray_image, [], images=[{"id": 1, "file_name": "missing.png"}])
    with pytest.raises(DataError, match=r"missing\.png: image file not found"):
        load_coco(path)
    (tmp_path / "img1.png").write_bytes(b"not a png")
    path = _hand_written(tmp_path, write_image, gray_image, [])
    (tmp_path / "img1.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"img1\.png: cannot read image"):
        load_coco(path)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(DataError, match=r"broken\.json: cannot read the COCO JSON"):
        load_coco(broken)
    results = tmp_path / "results.json"
    results.write_text("[]")
    with pytest.raises(DataError, match=r"results\.json: expected a COCO object"):
        load_coco(results)
    with pytest.raises(DataError, match=r"no annotations\.json"):
        load_coco_source(tmp_path)


def test_mixed_labels_can_be_refused(tmp_path, write_image, gray_image):
    anns = [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [0, 0, 5, 5]},
            {"id": 2, "image_id": 7, "category_id": 5, "bbox": [10, 10, 5, 5]}]
    path = _hand_written(tmp_path, write_image, gray_image, anns)
    assert load_coco(path)[0].image_label == 2
    with pytest.raises(DataError, match="mixed labels"):
        load_coco(path, mixed="error")


def test_spec_forms():
    assert parse_source("coco:some/dir").kind == "coco"
    assert parse_source("masks:root").kind == "masks"
    with pytest.raises(ValueError, match="coco:DIR"):
        parse_source("cocoa:x")


def test_cli_convert_exports_any_source(tmp_path, capsys, write_image, gray_image):
    from wsbus.cli import main

    out = tmp_path / "coco"
    assert main(["convert", "--data", "phantom:6", "--to", "coco", str(out), "--size", "48"]) == 0
    assert f"read them back with --data coco:{out}" in capsys.readouterr().out
    assert_same_samples(load_source(f"coco:{out}"), load_source("phantom:6", size=48))
    # a masks: folder, converted and read back
    root = tmp_path / "m"
    write_image(root / "images" / "s1.png", gray_image(20, 20, 1))
    m = np.zeros((20, 20), np.uint8)
    m[3:9, 4:12] = 255
    write_image(root / "masks" / "s1.png", m)
    (root / "labels.csv").write_text("id,label,patient\ns1,malignant,px\n")
    assert main(["convert", "--data", f"masks:{root}", "--to", "coco", str(tmp_path / "c2")]) == 0
    assert_same_samples(load_source(f"coco:{tmp_path / 'c2'}"), load_source(f"masks:{root}"))
    assert main(["convert", "--data", f"coco:{tmp_path / 'nothing'}", "--to", "coco", str(tmp_path / "c3")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_write_coco_refuses_a_used_folder_unless_overwrite(tmp_path):
    out = tmp_path / "coco"
    write_coco(make_phantom(3, size=32), out)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=r"coco: already holds annotations\.json and images/ .*--overwrite"):
        write_coco(make_phantom(2, size=32, seed=5), out)
    assert len(list((out / "images").iterdir())) == 3
    samples = make_phantom(2, size=32, seed=5)
    write_coco(samples, out, overwrite=True)
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(f"{s.id}.png" for s in samples)
    assert_same_samples(load_coco(out / "annotations.json"), samples)
    assert (out / "notes.txt").read_text() == "mine"                                # nothing else touched
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match=r"cannot create the output folder: .*file is a file, not a folder"):
        write_coco(samples, tmp_path / "file" / "coco")
