"""How an experiment divides its data and sets itself to it: folds files, settings from the data, cross-site
experiments, display names, the shipped-model zoo and the parallel plan. Hand-worked where possible."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from wsbus.checkpoint import CheckpointError, atomic_save
from wsbus.data import DataError, Sample, make_phantom
from wsbus.data.folds import fold_test_set, read_folds
from wsbus.data.sources import filter_samples
from wsbus.experiments import (CROSS_SITE_METHODS, PHANTOM_QUICK, REAL, REAL_QUICK, Recipe, default_methods,
                               display_source, parallel_plan, prepare_cross_site, prepare_data, run_experiment)
from wsbus.experiments.adapt import anchor_sizes, canvas_size, epoch_steps, held_out_count, input_scales
from wsbus.experiments.parallel import method_dependencies


def _sample(i, patient, label=1, shape=(40, 30), box=(5, 5, 15, 20), meta=None):
    img = np.zeros(shape, np.uint8)
    return Sample(img, np.array([box], np.float32), np.array([label]), label, f"img{i}", patient, dict(meta or {}))


# ------------------------------------------------------------------------------------------------ folds
def test_a_folds_file_by_image_or_patient_gives_its_fold_as_test(tmp_path):
    samples = [_sample(i, f"p{i // 2}", 1 + i % 2) for i in range(8)]          # 4 patients, 2 images each
    (tmp_path / "f.csv").write_text("ID,kFold\n" + "".join(f"img{i},{1 + (i // 2) % 2}\n" for i in range(8)))
    pool, test = fold_test_set(samples, read_folds(tmp_path / "f.csv"), 2)
    assert [s.id for s in test] == ["img2", "img3", "img6", "img7"] and len(pool) == 4
    (tmp_path / "p.csv").write_text("patient,fold\np0,1\np1,1\np2,2\np3,3\n")
    pool, test = fold_test_set(samples, read_folds(tmp_path / "p.csv"), 3)
    assert [s.id for s in test] == ["img6", "img7"]


def test_a_folds_file_that_splits_a_patient_or_misses_an_image_is_refused(tmp_path):
    samples = [_sample(i, "p0") for i in range(2)]
    (tmp_path / "f.csv").write_text("ID,kFold\nimg0,1\nimg1,2\n")
    with pytest.raises(ValueError, match="1 patient.*both sides"):
        fold_test_set(samples, read_folds(tmp_path / "f.csv"), 1)
    (tmp_path / "g.csv").write_text("ID,kFold\nimg0,1\n")
    with pytest.raises(ValueError, match="does not list image 'img1'"):
        fold_test_set(samples, read_folds(tmp_path / "g.csv"), 1)
    with pytest.raises(ValueError, match="no fold 7"):
        fold_test_set(samples[:1], read_folds(tmp_path / "g.csv"), 7)
    (tmp_path / "h.csv").write_text("name,x\na,1\n")
    with pytest.raises(DataError, match="h.csv: a folds file needs"):
        read_folds(tmp_path / "h.csv")
    (tmp_path / "i.csv").write_text("ID,kFold\nimg0,one\n")
    with pytest.raises(DataError, match="i.csv, line 2: fold 'one'"):
        read_folds(tmp_path / "i.csv")


def test_prepare_data_with_a_fold_holds_out_validation_from_the_other_folds(tmp_path):
    samples = make_phantom(120, seed=0, size=48)
    patients = sorted({s.patient or s.id for s in samples})
    (tmp_path / "f.csv").write_text("patient,fold\n" + "".join(f"{p},{1 + i % 3}\n" for i, p in enumerate(patients)))
    recipe = PHANTOM_QUICK.replace(n_val=6, size=48)
    data = prepare_data("phantom", recipe, 0, samples=samples, folds=tmp_path / "f.csv", fold=2)
    fold_of = {p: 1 + i % 3 for i, p in enumerate(patients)}
    assert data.fold == 2 and {fold_of[s.patient or s.id] for s in data.test} == {2}
    for part in (data.strong, data.weak, data.val):
        assert {fold_of[s.patient or s.id] for s in part} <= {1, 3}
    groups = [{s.patient or s.id for s in part} for part in (data.strong, data.weak, data.val, data.test)]
    assert all(not (a & b) for i, a in enumerate(groups) for b in groups[i + 1:])
    assert len(data.val) >= 6 and data.counts()["fold"] == 2
    with pytest.raises(ValueError, match="needs --fold"):
        prepare_data("phantom", recipe, 0, samples=samples, folds=tmp_path / "f.csv")
    with pytest.raises(ValueError, match="ships no folds file"):
        prepare_data("phantom", recipe, 0, samples=samples, fold=1)


# ------------------------------------------------------------------------------------------------ settings from data
def test_held_out_counts_scale_with_a_floor_and_a_ceiling():
    assert held_out_count(1875, 0.2, 150) == 375
    assert held_out_count(500, 0.2, 150) == 150          # the floor
    assert held_out_count(200, 0.2, 150) == 100          # never more than half
    with pytest.raises(ValueError):
        held_out_count(100, 1.0, 0)


def test_canvas_and_anchors_by_hand():
    # short side to 160: 200x100 -> 320 long, 100x100 -> 160; the 90th percentile of [160, 320, 320] is 320
    assert canvas_size([(100, 100), (200, 100), (100, 200)], 160) == 320
    assert canvas_size([(100, 100)], 160) == 160
    assert canvas_size([(110, 100)], 160) == 192          # 176 rounded up to 32
    np.testing.assert_allclose(input_scales([(100, 200)], 160, 256), [1.28])   # 160/100 = 1.6 capped by 256/200
    # median 40: 20 / 40 / 80 unless the masses spread wider
    assert anchor_sizes([40] * 9) == (20, 40, 80)
    wide = anchor_sizes([10] + [40] * 18 + [200])
    assert wide[0] <= 20 and wide[2] >= 80 and wide[0] < wide[1] < wide[2]
    with pytest.raises(ValueError):
        anchor_sizes([])
    assert epoch_steps(15, 1275, 2, 500) == math.ceil(15 * 1275 / 2) and epoch_steps(1, 10, 2, 500) == 500


def test_a_recipe_resolves_its_automatic_settings_once():
    strong = [_sample(i, f"p{i}", shape=(120, 80), box=(10, 10, 50, 50)) for i in range(4)]
    weak = [_sample(10 + i, f"q{i}", shape=(100, 100)) for i in range(6)]
    r = Recipe(n_strong=4, strong_fraction=None, size=80, max_size="auto", detector={"anchor_sizes": "auto"},
               epochs={"strong_full": 10, "joint": 2}, min_steps=5, batch_strong=2, batch_weak=2)
    done = r.resolve(strong, weak)
    assert done.max_size == 128 and done.detector["anchor_sizes"] == (20, 40, 80)   # box side 40 at scale 1
    assert done.strong_full_steps == 50 and done.joint_steps == 6 and done.epochs == {}
    assert done.resolve(strong, weak) is done
    assert REAL.held_out_sizes(1875, 1500) == (375, 225) and REAL_QUICK.held_out_sizes(1875) == (12, 0)


# ------------------------------------------------------------------------------------------------ filters, names
def test_source_filters_and_display_names():
    s = [_sample(i, f"p{i}", meta={"device": d}) for i, d in enumerate(["GE Logiq 7", "GE Logiq 5", "Toshiba"])]
    assert [x.id for x in filter_samples(s, [("device", "=", "logiq")])] == ["img0", "img1"]
    assert [x.id for x in filter_samples(s, [("device", "!=", "Logiq 7")])] == ["img1", "img2"]
    with pytest.raises(ValueError, match="its device values are"):
        filter_samples(s, [("device", "=", "Siemens")])
    assert display_source("busbra:../shared/data/BUSBRA") == "busbra:BUSBRA"
    assert display_source("busbra:/x/BUSBRA/?device=Logiq 7") == "busbra:BUSBRA?device=Logiq 7"
    assert display_source("phantom:40") == "phantom:40"


# ------------------------------------------------------------------------------------------------ cross-site
def test_a_cross_site_split_takes_source_boxes_and_target_patients():
    src = [s for s in make_phantom(60, seed=1, size=48) if s.image_label > 0]
    tgt = [Sample(s.image, s.boxes, s.labels, s.image_label, "t" + s.id, "t" + (s.patient or s.id))
           for s in make_phantom(80, seed=2, size=48)]
    recipe = PHANTOM_QUICK.replace(n_test={0: 4, 1: 8, 2: 8}, n_val=6, size=48)
    d = prepare_cross_site("phantom:60", "masks:/site", recipe, 0, samples=src, target_samples=tgt,
                           n_target_strong=4)
    assert d.design == "cross_site" and [s.id for s in d.strong] == [s.id for s in src if s.is_strong]
    assert all(s.id.startswith("t") for s in d.weak + d.val + d.test) and len(d.target_strong) == 4
    assert {s.id for s in d.target_strong} <= {s.id for s in d.weak}
    assert default_methods(d) == ("source_only", "joint", "joint_self_training", "target_few", "target_full")
    assert set(default_methods(d)) <= set(CROSS_SITE_METHODS)
    few = prepare_cross_site("phantom:60", "masks:/site", recipe, 0, samples=src, target_samples=tgt,
                             n_source_strong=10)
    assert len(few.strong) in (10, 11) and default_methods(few)[-1] == "target_full"
    with pytest.raises(ValueError, match="share .* image id"):
        prepare_cross_site("phantom:60", "phantom:60", recipe, 0, samples=src, target_samples=src)


@pytest.mark.slow
def test_a_cross_site_experiment_reports_against_source_only(tmp_path):
    src = make_phantom(70, seed=1, size=48)
    tgt = [Sample(s.image, s.boxes, s.labels, s.image_label, "t" + s.id, "t" + (s.patient or s.id))
           for s in make_phantom(70, seed=2, size=48)]
    recipe = PHANTOM_QUICK.replace(size=48)
    from wsbus.experiments import Experiment

    data = prepare_cross_site("phantom:70", "masks:/site", recipe, 0, samples=src, target_samples=tgt)
    res = Experiment(data, recipe, tmp_path, progress=False).run()
    names = [m["name"] for m in res["methods"]]
    assert names == ["source_only", "joint", "joint_self_training", "target_full"]
    assert res["reference"] == "source_only" and res["design"] == "cross_site"
    assert set(res["finding"]["checks"]) == {"joint_gains_over_source_only", "self_training_not_below_joint"}
    assert "Table V (phantom:70 -> masks:site" in (tmp_path / "table_v.md").read_text()


# ------------------------------------------------------------------------------------------------ parallel plan
def test_the_parallel_plan_respects_warm_starts_and_self_training():
    methods = ["strong_full", "strong_few", "weak_only", "joint", "joint_paper", "joint_self_training"]
    deps = method_dependencies(methods, {"joint": "strong_few"})
    assert deps["joint"] == ["strong_few"] and deps["joint_self_training"] == ["joint"]
    waves = parallel_plan(methods, deps, jobs=2)
    order = [m for w in waves for m in w]
    assert all(len(w) <= 2 for w in waves) and sorted(order) == sorted(methods)
    assert order.index("strong_few") < order.index("joint") < order.index("joint_self_training")


# ------------------------------------------------------------------------------------------------ the zoo
def test_a_shipped_model_is_checked_against_its_card(tmp_path, monkeypatch):
    from wsbus.models import build_detector, zoo

    monkeypatch.setattr(zoo, "WEIGHTS_DIR", tmp_path)
    model = build_detector("tiny")
    atomic_save({"model": model.state_dict(), "config": {"model": model.config}}, tmp_path / "site.pt")
    card = {"name": "site", "file": "site.pt", "sha256": zoo.file_sha256(tmp_path / "site.pt")}
    (tmp_path / "site.json").write_text(json.dumps(card))
    assert zoo.available_models() == ["site"] and zoo.model_card("site")["file"] == "site.pt"
    loaded = zoo.pretrained("site")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="no shipped detector 'nope'; shipped: site"):
        zoo.model_card("nope")
    (tmp_path / "site.pt").write_bytes((tmp_path / "site.pt").read_bytes() + b"x")
    with pytest.raises(CheckpointError, match="the file was changed"):
        zoo.pretrained_path("site")


def test_the_shipped_busbra_detector_matches_its_card():
    from wsbus.models import available_models, model_card, pretrained

    if "busbra" not in available_models():
        pytest.skip("no shipped busbra detector in this checkout")
    from wsbus.models.zoo import weights_sha256

    card = model_card("busbra")
    model = pretrained("busbra")     # the file's SHA-256 is checked against the card when it loads
    assert weights_sha256(model.state_dict()) == card["weights_sha256"]
    assert card["training_data"]["images"] == 1875 and card["method"] == "strong_full"
    assert model.config["backbone"] == card["recipe"]["backbone"]
    assert card["held_out_accuracy"]["per_fold"] and "NOT for diagnosis" in card["intended_use"]
    # docs/models.md is the card for people, written from the JSON by the same command
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("make_shipped_model", root / "scripts" / "make_shipped_model.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert (root / "docs" / "models.md").read_text() == script.model_card_markdown(card)


def test_run_experiment_quick_records_the_resolved_settings(tmp_path):
    res = run_experiment("phantom", tmp_path, recipe=PHANTOM_QUICK, methods=["strong_few"], progress=False,
                         verbose=False)
    assert res["config"]["max_size"] == PHANTOM_QUICK.size and res["data"]["design"] == "split"


# ------------------------------------------------------------------------------------------------ small phantoms
def test_a_smaller_phantom_scales_the_recipes_counts():
    from wsbus.experiments import PHANTOM

    small = PHANTOM.for_phantom_images(56)                       # a tenth of the recipe's 560 images
    assert small.n_test == {0: 3, 1: 6, 2: 6} and small.phantom_images == 56
    assert small.strong_fraction == PHANTOM.strong_fraction      # fractions need no change
    assert PHANTOM.for_phantom_images(560) is PHANTOM and PHANTOM.for_phantom_images(900) is PHANTOM
    assert PHANTOM.replace(n_test=2, n_val=0).for_phantom_images(10).n_test == 1   # never below one image
    data = prepare_data("phantom:60", PHANTOM.replace(size=48))
    assert len(data.test) == 15 and data.recipe.n_test == {0: 3, 1: 6, 2: 6}
