"""Label-free backbone pretraining (wsbus.pretrain, `wsbus pretrain`): the losses against hand computations, each
method learning on an easy case, resume bit for bit, refusals, the detector's backbone initialised and nothing
else, and the command line as a user drives it."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import wsbus.pretrain.views as pretrain_views
from wsbus.checkpoint import CheckpointError, atomic_save
from wsbus.cli import main
from wsbus.data import Sample, make_phantom
from wsbus.data.formats import DataError
from wsbus.models import build_detector
from wsbus.models.transform import GrayscaleRCNNTransform
from wsbus.pretrain import (METHODS, BYOL, PretrainConfig, batch_indices, build_pretrain_backbone, byol_loss,
                            exclude_images, image_record, init_backbone, knn_accuracy, linear_probe_accuracy,
                            load_backbone, load_pretrained, nt_xent, patch_mask, pooled_features, pretrain_backbone,
                            read_ids, resize_like_detector, resume_path)

ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(size=64, batch_size=8, progress=False, device="cpu")


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(16, seed=0, size=64)


def wsbus(*args, timeout=180):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "wsbus", *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def weights(path):
    return load_backbone(path)[0]


# ----------------------------------------------------------------------------------------------- the formulas
def test_nt_xent_matches_a_hand_built_similarity_matrix():
    g = torch.Generator().manual_seed(0)
    za, zb = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    tau = 0.3
    u = [v / v.norm() for v in torch.cat([za, zb])]
    n = len(u)
    total = 0.0
    for i in range(n):
        partner = (i + 5) % n
        num = math.exp(float(u[i] @ u[partner]) / tau)
        den = sum(math.exp(float(u[i] @ u[k]) / tau) for k in range(n) if k != i)
        total += -math.log(num / den)
    assert float(nt_xent(za, zb, tau)) == pytest.approx(total / n, rel=1e-5)
    # perfectly aligned, mutually orthogonal pairs are the easy case: the loss is far below that of random pairs
    eye = torch.eye(5, 7)
    assert float(nt_xent(eye, eye, 0.1)) < 1e-3 < float(nt_xent(za, zb, 0.1))
    with pytest.raises(ValueError, match="two \\[B, D\\] tensors"):
        nt_xent(za, zb[:4])


def test_byol_loss_and_its_ema_target():
    p, z = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    assert float(byol_loss(p, z)) == pytest.approx(((2 - 2 * 1) + (2 - 2 * 0)) / 2)
    config = PretrainConfig(method="byol", steps=10, ema=0.9, size=64)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        objective = BYOL(build_pretrain_backbone(config), config)
    online = objective.backbone[0].weight
    target = objective.target_backbone[0].weight
    with torch.no_grad():
        online.add_(1.0)
    before = target.detach().clone()
    m = objective.momentum(3)
    assert m == pytest.approx(1 - 0.1 * (math.cos(math.pi * 4 / 10) + 1) / 2)
    assert objective.momentum(9) == 1.0
    objective.after_step(3)
    assert torch.allclose(target, m * before + (1 - m) * online.detach())
    assert not any(p.requires_grad for p in objective.target_backbone.parameters())


def test_patch_mask_masks_exactly_the_ratio_in_whole_patches():
    mask = patch_mask(3, 64, 16, 0.6, torch.Generator().manual_seed(1))
    assert mask.shape == (3, 1, 64, 64)
    cells = mask[:, 0, ::16, ::16]
    assert torch.equal(cells.repeat_interleave(16, 1).repeat_interleave(16, 2), mask[:, 0])   # whole patches
    assert cells.flatten(1).sum(1).tolist() == [10.0, 10.0, 10.0]                           # round(0.6 * 16)
    assert not torch.equal(cells[0], cells[1])


def test_images_are_resized_as_the_detector_resizes_them(gray_image):
    transform = GrayscaleRCNNTransform(160, 320, [0.0], [1.0])
    gray = torch.from_numpy(gray_image(90, 130, seed=2))[None]
    want = transform.resize(gray.float() / 255.0)[0]
    got = resize_like_detector(gray, 160, 320)
    assert got.shape == want.shape == (1, 160, 231) and torch.allclose(got, want, atol=1e-6)
    rgb = torch.stack([gray[0], gray[0] // 2, gray[0]])           # averaged to gray, as the detector does
    assert torch.allclose(resize_like_detector(rgb, 160, 320), transform.resize(rgb.float().mean(0, True) / 255)[0],
                          atol=1e-6)
    long = torch.zeros(1, 40, 400, dtype=torch.uint8)              # the long side caps the scale
    assert resize_like_detector(long, 160, 320).shape == (1, 32, 320)


def test_batches_cover_each_epoch_without_repeats_and_depend_on_the_step_only():
    epoch = [batch_indices(k, 4, 10, seed=3) for k in range(2)]
    assert all(len(b) == 4 for b in epoch) and len(set(epoch[0]) | set(epoch[1])) == 8
    assert batch_indices(5, 4, 10, seed=3) == batch_indices(5, 4, 10, seed=3) != batch_indices(5, 4, 10, seed=4)
    with pytest.raises(ValueError, match="batch_size must lie in 1..10"):
        batch_indices(0, 11, 10, seed=0)


# ----------------------------------------------------------------------------------------------- the methods
@pytest.mark.parametrize("method", METHODS)
def test_each_method_learns_on_an_easy_case(method, phantom, tmp_path):
    result = pretrain_backbone(phantom, tmp_path / f"{method}.pt", method=method, steps=30, warmup=0.0, **SMALL)
    losses = torch.tensor([h["loss"] for h in result.history])
    assert len(losses) == 30 and torch.isfinite(losses).all()
    assert losses[-5:].mean() < 0.97 * losses[:5].mean(), losses
    stored = load_pretrained(tmp_path / f"{method}.pt")
    assert stored["step"] == 30 and stored["config"]["method"] == method and stored["images"]["n"] == 16
    assert set(stored["backbone"]) == set(build_pretrain_backbone(PretrainConfig(size=64)).state_dict())
    fresh = build_pretrain_backbone(PretrainConfig(size=64)).state_dict()
    assert any(not torch.equal(fresh[k], v) for k, v in stored["backbone"].items())
    assert not resume_path(tmp_path / f"{method}.pt").exists()


def test_only_the_images_are_read_never_labels_or_boxes(phantom, tmp_path):
    a = pretrain_backbone(phantom, tmp_path / "a.pt", steps=3, **SMALL)
    relabelled = [Sample(s.image, None, None, (s.image_label + 1) % 3, s.id) for s in phantom]
    b = pretrain_backbone(relabelled, tmp_path / "b.pt", steps=3, **SMALL)
    assert all(torch.equal(v, weights(b.path)[k]) for k, v in weights(a.path).items())
    assert a.images == image_record(phantom) and a.images["ids"] == sorted(s.id for s in phantom)


# ----------------------------------------------------------------------------------------------- resume and refusals
class _Stop(KeyboardInterrupt):
    pass


def test_an_interrupted_run_resumes_bit_for_bit(phantom, tmp_path, monkeypatch):
    settings = dict(method="byol", steps=9, checkpoint_every=4, **SMALL)   # BYOL: optimiser + EMA target to restore
    whole = pretrain_backbone(phantom, tmp_path / "whole.pt", **settings)
    make_views = pretrain_views.make_views

    def interrupt_at_7(images, indices, pipeline, n_views, seed, step):
        if step == 7:
            raise _Stop()
        return make_views(images, indices, pipeline, n_views, seed, step)

    monkeypatch.setattr(pretrain_views, "make_views", interrupt_at_7)
    with pytest.raises(_Stop):
        pretrain_backbone(phantom, tmp_path / "cut.pt", **settings)
    monkeypatch.undo()
    assert not (tmp_path / "cut.pt").exists() and resume_path(tmp_path / "cut.pt").exists()
    cut = pretrain_backbone(phantom, tmp_path / "cut.pt", **settings)
    assert cut.resumed_from == 7 and not cut.cached and cut.step == 9
    assert [h["loss"] for h in cut.history] == [h["loss"] for h in whole.history]
    assert all(torch.equal(v, weights(cut.path)[k]) for k, v in weights(whole.path).items())
    again = pretrain_backbone(phantom, tmp_path / "cut.pt", **settings)        # finished: returned as it is
    assert again.cached and again.step == 9
    ahead = pretrain_backbone(phantom, tmp_path / "ahead.pt", workers=1, **settings)   # views made in a worker
    assert all(torch.equal(v, weights(ahead.path)[k]) for k, v in weights(whole.path).items())


def test_other_settings_or_images_are_refused_with_what_differs(phantom, tmp_path, monkeypatch):
    out = tmp_path / "run.pt"
    pretrain_backbone(phantom, out, steps=3, **SMALL)
    with pytest.raises(ValueError, match=r"lr: 0\.001 there, 0\.002 here") as info:
        pretrain_backbone(phantom, out, steps=3, lr=2e-3, **SMALL)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=r"images: 16 there, 15 here \(1 only there, 0 only here\)"):
        pretrain_backbone(phantom[1:], out, steps=3, **SMALL)
    brighter = [Sample(np.clip(s.image.astype(int) + 1, 0, 255).astype(np.uint8), None, None, 0, s.id)
                for s in phantom]
    with pytest.raises(ValueError, match="the same 16 ids with other pixels"):
        pretrain_backbone(brighter, out, steps=3, **SMALL)
    assert pretrain_backbone(phantom, out, steps=3, lr=2e-3, resume=False, **SMALL).config["lr"] == 2e-3
    # an interrupted run's state is refused just as well
    monkeypatch.setattr(pretrain_views, "make_views", lambda *a: (_ for _ in ()).throw(_Stop()))
    with pytest.raises(_Stop):
        pretrain_backbone(phantom, tmp_path / "cut.pt", steps=3, checkpoint_every=1, **SMALL)
    monkeypatch.undo()
    atomic_save({"kind": "wsbus.pretrain_state", "version": 1, "config": PretrainConfig(size=64, steps=3,
                 batch_size=8).as_dict(), "images": image_record(phantom), "step": 1, "objective": {},
                 "optimizer": {}, "history": []}, resume_path(tmp_path / "cut.pt"))
    with pytest.raises(ValueError, match="seed: 0 there, 1 here"):
        pretrain_backbone(phantom, tmp_path / "cut.pt", steps=3, seed=1, **SMALL)


def test_a_non_finite_loss_stops_before_the_update_and_names_the_kept_state(phantom, tmp_path, monkeypatch):
    import wsbus.pretrain.objectives as objectives
    from wsbus.engine import NonFiniteLossError

    real = objectives.nt_xent
    calls = []

    def nan_at_step_5(z_a, z_b, temperature):
        calls.append(1)
        loss = real(z_a, z_b, temperature)
        return loss * float("nan") if len(calls) == 6 else loss

    monkeypatch.setattr(objectives, "nt_xent", nan_at_step_5)
    out = tmp_path / "nan.pt"
    with pytest.raises(NonFiniteLossError, match=f"step.*5.*{resume_path(out).name}.*step 4") as info:
        pretrain_backbone(phantom, out, steps=9, checkpoint_every=2, **SMALL)
    assert info.value.step == 5 and info.value.checkpoint == resume_path(out) and not out.exists()
    assert torch.load(resume_path(out), weights_only=True)["step"] == 4


def test_bad_settings_are_refused_in_one_line(phantom, tmp_path):
    with pytest.raises(ValueError, match="unknown pretraining method 'moco'"):
        pretrain_backbone(phantom, tmp_path / "x.pt", method="moco", **SMALL)
    with pytest.raises(ValueError, match="batch_size must lie in 1..16"):
        pretrain_backbone(phantom, tmp_path / "x.pt", **{**SMALL, "batch_size": 32})
    with pytest.raises(ValueError, match="crop must be a positive multiple of 16"):
        PretrainConfig(crop=100)
    with pytest.raises(ValueError, match="unique ids"):
        pretrain_backbone(phantom + phantom[:1], tmp_path / "x.pt", **SMALL)
    with pytest.raises(TypeError):
        pretrain_backbone(phantom, tmp_path / "x.pt", colour_jitter=0.4, **SMALL)


# ----------------------------------------------------------------------------------------------- the detector
def test_init_backbone_changes_exactly_the_backbone(phantom, tmp_path):
    result = pretrain_backbone(phantom, tmp_path / "b.pt", steps=3, **SMALL)
    torch.manual_seed(0)
    model = build_detector("tiny", min_size=64, max_size=64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = init_backbone(model, result.path)
    assert config["method"] == "simclr" and config["stride"] == 8
    after = model.state_dict()
    stored = weights(result.path)
    for k, v in after.items():
        if k.startswith("backbone."):
            assert torch.equal(v, stored[k[len("backbone."):]])
        else:
            assert torch.equal(v, before[k]), k
    assert any(not torch.equal(after[f"backbone.{k}"], before[f"backbone.{k}"]) for k in stored)


def test_init_backbone_refuses_what_does_not_fit_in_one_line(phantom, tmp_path):
    result = pretrain_backbone(phantom, tmp_path / "b.pt", steps=1, **SMALL)
    other = build_detector("resnet18", min_size=64, max_size=64)
    checks = [(other, result.path, "holds a 'tiny' backbone; this detector's is 'resnet18'")]
    tiny = build_detector("tiny", min_size=64, max_size=64)
    checks.append((build_detector("tiny", min_size=64, max_size=64, image_mean=(0.5,)), result.path,
                   "was pretrained with image_mean"))
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    checks.append((tiny, tmp_path / "garbage.pt", "is not a wsbus checkpoint: it is a text file"))
    atomic_save({"model": tiny.state_dict(), "step": 3}, tmp_path / "detector.pt")
    checks.append((tiny, tmp_path / "detector.pt", "is not a pretrained backbone written by `wsbus pretrain`"))
    stored = load_pretrained(result.path)
    stored["backbone"] = {k: v[..., :1] if v.ndim == 4 else v for k, v in stored["backbone"].items()}
    atomic_save(stored, tmp_path / "shapes.pt")
    checks.append((tiny, tmp_path / "shapes.pt", "does not fit this detector's backbone: 4 other shapes"))
    checks.append((tiny, tmp_path / "missing.pt", "does not exist"))
    for model, path, message in checks:
        with pytest.raises(CheckpointError, match=message) as info:
            init_backbone(model, path)
        assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------------------------- ids and probes
def test_id_files_and_exclusion(phantom, tmp_path):
    (tmp_path / "ids.txt").write_text(f"# test fold\n{phantom[0].id}\n\n{phantom[1].id}  # second\n")
    (tmp_path / "split.json").write_text(json.dumps({"strong": [phantom[2].id], "test": [phantom[0].id]}))
    (tmp_path / "list.json").write_text(json.dumps([phantom[3].id]))
    assert read_ids(tmp_path / "ids.txt") == [phantom[0].id, phantom[1].id]
    assert read_ids(tmp_path / "split.json") == [phantom[0].id]
    assert read_ids(tmp_path / "list.json") == [phantom[3].id]
    kept = exclude_images(phantom, read_ids(tmp_path / "ids.txt"))
    assert [s.id for s in kept] == [s.id for s in phantom[2:]]
    with pytest.raises(ValueError, match="1 of 2 id\\(s\\) are not in the data \\(e.g. 'nope'\\)"):
        exclude_images(phantom, [phantom[0].id, "nope"])
    (tmp_path / "bad.json").write_text("{\"strong\": []}")
    with pytest.raises(DataError, match="needs a 'test' or 'val' list"):
        read_ids(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("[1, 2")
    with pytest.raises(DataError, match="not valid JSON"):
        read_ids(tmp_path / "broken.json")


def test_probes_separate_separable_features_and_not_shuffled_ones():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(80) % 2
    x = 0.3 * torch.randn(80, 3, generator=g) + 2.0 * y[:, None] * torch.tensor([1.0, 0.0, 0.0])
    assert knn_accuracy(x[:60], y[:60], x[60:], y[60:], k=5) == 1.0
    assert linear_probe_accuracy(x[:60], y[:60], x[60:], y[60:]) == 1.0
    noise = torch.randn(80, 6, generator=g)
    assert linear_probe_accuracy(noise[:60], y[:60], noise[60:], y[60:]) < 0.8


def test_pooled_features_of_images_and_boxes(phantom):
    backbone = build_pretrain_backbone(PretrainConfig(size=64))
    masses = [s for s in phantom if len(s.boxes)]
    whole = pooled_features(backbone, masses, size=64)
    boxes = pooled_features(backbone, masses, size=64, region="box")
    assert whole.shape == boxes.shape == (len(masses), 128) and not torch.allclose(whole, boxes)
    normal = [s for s in phantom if not len(s.boxes)]
    with pytest.raises(ValueError, match="has no box to pool"):
        pooled_features(backbone, normal[:1], size=64, region="box")


# ----------------------------------------------------------------------------------------------- the command line
PRETRAIN = ("pretrain", "--data", "phantom:24", "--size", "64", "--batch-size", "8", "--no-progress", "--device",
            "cpu")


def test_cli_pretrains_reruns_and_excludes(tmp_path, capsys):
    out = tmp_path / "runs" / "simclr.pt"
    first = wsbus(*PRETRAIN, "--steps", "4", "--out", out)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().splitlines() == [
        f"pretrained the tiny backbone with simclr for 4 steps on 24 images of phantom:24 at 64 px (on cpu; wrote "
        f"{out})"]
    assert load_pretrained(out)["images"]["n"] == 24
    again = wsbus(*PRETRAIN, "--steps", "4", "--out", out)
    assert again.returncode == 0 and "already done with these settings and images, nothing trained" in again.stdout
    # the same program in-process (faster): other settings are refused, --restart overwrites, --exclude excludes
    assert main([*PRETRAIN, "--steps", "5", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"wsbus: error: {str(out)!r} belongs to a pretraining with other settings or images (steps: 4 there, 5 here); "
        f"rerun with the same arguments to continue it, use another output file, or start afresh (resume=False, "
        f"--restart)"]
    assert main([*PRETRAIN, "--steps", "5", "--out", str(out), "--restart"]) == 0
    assert load_pretrained(out)["step"] == 5
    ids = tmp_path / "test_ids.txt"
    ids.write_text("ph0-00000\nph0-00003\n")
    assert main([*PRETRAIN, "--steps", "2", "--method", "mae", "--exclude", str(ids), "--out",
                 str(tmp_path / "mae.pt")]) == 0
    assert "on 22 images of phantom:24 (2 excluded)" in capsys.readouterr().out
    used = load_pretrained(tmp_path / "mae.pt")["images"]["ids"]
    assert len(used) == 22 and not {"ph0-00000", "ph0-00003"} & set(used)


def test_cli_help_answers_without_importing_torch():
    code = ("import sys\nfrom wsbus.cli import main\ntry:\n    main(['pretrain', '--help'])\nexcept SystemExit:\n"
            "    pass\nprint('TORCH' if 'torch' in sys.modules else 'NO TORCH')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("NO TORCH"), proc.stderr
    for option in ("--method", "--exclude", "--restart", "--workers", "--amp", "--threads"):
        assert option in proc.stdout


def test_cli_bad_data_is_one_line(tmp_path):
    proc = wsbus("pretrain", "--data", "busbra:/no/such/folder", "--out", tmp_path / "x.pt")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "wsbus: error: data spec 'busbra:/no/such/folder': the folder '/no/such/folder' does not exist"]


@pytest.mark.parametrize("args, message", [
    (("--exclude", "{ids}"), "--exclude {ids}: 1 of 1 id(s) are not in the data (e.g. 'bus_0001-l')"),
    (("--exclude", "{missing}"), "id file '{missing}' does not exist"),
    (("--out", "{bad}"), "checkpoint '{bad}' is not a wsbus checkpoint: it is a text file"),
    (("--data", "phantom:4"), "batch_size must lie in 1..4"),
    (("--device", "cuda:7"), "CUDA is not available"),
])
def test_cli_bad_input_is_one_line(tmp_path, capsys, args, message):
    if "cuda" in args[1] and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    (tmp_path / "ids.txt").write_text("bus_0001-l\n")
    (tmp_path / "bad.pt").write_text("not a torch file")
    fill = {"ids": tmp_path / "ids.txt", "bad": tmp_path / "bad.pt", "missing": tmp_path / "none.txt"}
    argv = ["pretrain", "--data", "phantom:24", "--out", str(tmp_path / "x.pt"), "--size", "64", "--batch-size",
            "8", "--steps", "2", "--no-progress", *[a.format(**fill) for a in args]]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wsbus: error: ") and message.format(**fill) in lines[0], lines
    assert (tmp_path / "bad.pt").read_text() == "not a torch file"      # never overwritten without --restart


def test_cli_interrupt_keeps_the_state_and_the_rerun_continues(tmp_path):
    out = tmp_path / "byol.pt"
    run = [*PRETRAIN, "--method", "byol", "--steps", "120", "--checkpoint-every", "1", "--out", out]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "wsbus", *map(str, run)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not resume_path(out).exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("wsbus: interrupted by SIGINT; rerun the same command")
    assert not out.exists()
    step = torch.load(resume_path(out), weights_only=True)["step"]
    assert 1 <= step < 120
    again = wsbus(*run)
    assert again.returncode == 0, again.stderr
    assert (f"for 120 steps on 24 images of phantom:24 at 64 px (resumed at step {step} on cpu; wrote {out})"
            in again.stdout)
    assert load_pretrained(out)["step"] == 120 and not resume_path(out).exists()
