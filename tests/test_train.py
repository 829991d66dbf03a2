"""The Trainer: data streams, the loss of each mode and stream, NaN guard, AMP, clipping, logs, bad input,
and (with the real tiny detector on the phantom) that training learns."""
from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest  # noqa: E402
import torch  # noqa: E402

from _fake_model import FakeDetector, TinyBoxes  # noqa: E402
from wsbus.checkpoint import load_checkpoint  # noqa: E402
from wsbus.seeding import derive_seed  # noqa: E402
from wsbus.engine import (History, NonFiniteLossError, StreamBatchSampler, Trainer, step_batches,  # noqa: E402
                          stream_batch, stream_positions)

torch.set_num_threads(1)


def trainer(mode="joint", mixing="combined", seed=0, **kw):
    torch.manual_seed(seed)
    strong = TinyBoxes(10, "strong", seed=1) if mode != "weak" else None
    weak = TinyBoxes(14, "weak", seed=2) if mode != "strong" else None
    kw.setdefault("progress", False)
    kw.setdefault("tensorboard", False)
    kw.setdefault("steps", 6)
    model = kw.pop("model", None) or FakeDetector()
    return Trainer(model, strong, weak, mode=mode, mixing=mixing, **kw)


# --------------------------------------------------------------------------------------------------------
# streams
# --------------------------------------------------------------------------------------------------------

def test_stream_batches_follow_the_documented_formula():
    n, b, seed = 7, 3, 11
    perms = [torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, "weak", "epoch", e)))
             for e in range(4)]
    flat = torch.cat(perms).tolist()
    for index in range(6):
        got = stream_batch(n, b, seed=seed, stream="weak", index=index)
        assert [i for i, _ in got] == flat[index * b:(index + 1) * b]
        assert [a for _, a in got] == [derive_seed(seed, "weak", "aug", index, j, bits=32) for j in range(b)]
    # every epoch visits every item once
    assert all(sorted(p.tolist()) == list(range(n)) for p in perms)
    assert perms[0].tolist() != perms[1].tolist()


def test_rank_shards_tile_the_global_batch():
    single = list(StreamBatchSampler(9, 4, seed=3, stream="strong", start=2, stop=7))
    shards = [list(StreamBatchSampler(9, 2, seed=3, stream="strong", start=2, stop=7, rank=r, world_size=2))
              for r in range(2)]
    assert [s0 + s1 for s0, s1 in zip(*shards)] == single
    assert len(single) == 5


def test_step_batches_and_positions_agree():
    for mode, mixing in (("strong", "combined"), ("weak", "combined"), ("joint", "combined"),
                         ("joint", "alternating")):
        used = {"strong": 0, "weak": 0}
        for k in range(9):
            for name, index in step_batches(k, mode, mixing):
                assert index == used[name]          # batches are consumed in order, none skipped
                used[name] += 1
            assert stream_positions(k + 1, mode, mixing) == used
    assert [step_batches(k, "joint", "alternating")[0][0] for k in range(4)] == ["strong", "weak"] * 2
    with pytest.raises(ValueError, match="mixing"):
        step_batches(0, "joint", "interleaved")


def test_num_workers_do_not_change_training():
    a = trainer(num_workers=0)
    a.fit()
    b = trainer(num_workers=2)
    b.fit()
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k


# --------------------------------------------------------------------------------------------------------
# losses per mode and stream
# --------------------------------------------------------------------------------------------------------

STRONG = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg")


def test_combined_joint_loss_is_ls_plus_alpha_lws():
    tr = trainer(alpha=lambda step: 0.1 * step)
    hist = tr.fit()
    assert hist.column("batch") == ["strong+weak"] * 6
    for r in hist:
        assert r["alpha"] == pytest.approx(0.1 * r["step"])
        ls = sum(r[k] for k in STRONG)
        assert r["loss"] == pytest.approx(ls + r["alpha"] * r["loss_mil"], rel=1e-6)
        assert r["loss_mil"] > 0 and ls > 0


def test_alternating_stream_alternates():
    tr = trainer(mixing="alternating", alpha=0.25, steps=7)
    hist = tr.fit()
    assert hist.column("batch") == ["strong", "weak", "strong", "weak", "strong", "weak", "strong"]
    for r in hist:
        if r["batch"] == "strong":
            assert r["loss_mil"] == 0 and r["loss"] == pytest.approx(sum(r[k] for k in STRONG), rel=1e-6)
        else:
            assert all(r[k] == 0 for k in STRONG)
            assert r["loss"] == pytest.approx(0.25 * r["loss_mil"], rel=1e-6)


def test_strong_and_weak_modes():
    s = trainer("strong").fit()
    assert set(s.column("batch")) == {"strong"} and set(s.column("alpha")) == {0.0}
    assert all(r["loss_mil"] == 0 and r["loss"] > 0 for r in s)
    w = trainer("weak").fit()
    assert set(w.column("batch")) == {"weak"} and set(w.column("alpha")) == {1.0}
    assert all(r["loss"] == r["loss_mil"] > 0 for r in w)
    # weak-only training never touches the RPN head: it gets no gradient from L_ws
    tr = trainer("weak")
    before = tr.model.rpn.weight.detach().clone()
    tr.fit()
    assert torch.equal(before, tr.model.rpn.weight)


def test_gradual_alpha_by_name_spans_the_run():
    tr = trainer(alpha="gradual", steps=60)
    assert tr.alpha(0) == pytest.approx(0.01)
    assert tr.alpha(59) == pytest.approx(1 - 0.99 * 0.9 ** 29)
    assert tr.settings()["alpha"]["schedule"] == "gradual"


def test_loss_falls_on_the_fake_model():
    tr = trainer("strong", steps=60, lr=3e-3)
    hist = tr.fit()
    first, last = sum(hist.losses[:10]) / 10, sum(hist.losses[-10:]) / 10
    assert last < 0.8 * first


# --------------------------------------------------------------------------------------------------------
# NaN guard, AMP, clipping
# --------------------------------------------------------------------------------------------------------

def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    saved = {}

    def snapshot(tr, record):
        if tr.step == 5:
            saved["bytes"] = (tmp_path / "last.pt").read_bytes()

    tr = trainer(model=FakeDetector(nan_at_call=8), out_dir=tmp_path, checkpoint_every=5, steps=20,
                 callbacks=[snapshot])
    with pytest.raises(NonFiniteLossError, match=r"step 7: .*loss_mil=nan.*last.pt.*\(step 5\) is untouched") as e:
        tr.fit()
    assert e.value.step == 7 and math.isnan(e.value.losses["loss_mil"])
    assert math.isfinite(e.value.losses["loss_objectness"])
    assert (tmp_path / "last.pt").read_bytes() == saved["bytes"]
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 5
    assert tr.step == 7 and all(torch.isfinite(p).all() for p in tr.model.parameters())
    assert "non-finite loss at step 7" in (tmp_path / "train.log").read_text()
    with open(tmp_path / "log.csv") as f:
        assert [r["step"] for r in csv.DictReader(f)] == [str(k) for k in range(7)]


def test_bf16_autocast_on_cpu_trains():
    tr = trainer(amp=True)
    assert tr.amp_dtype == torch.bfloat16 and not tr.scaler.is_enabled()
    hist = tr.fit()
    assert all(math.isfinite(v) for v in hist.losses)
    assert tr.settings()["amp_dtype"] == "bfloat16"


def test_clip_grad_norm_bounds_the_update():
    clip, lr = 1e-3, 1.0
    tr = trainer("strong", clip_grad_norm=clip, optimizer="sgd", lr=lr, weight_decay=0.0, steps=1)
    before = [p.detach().clone() for p in tr.model.parameters()]
    rec = tr.fit()[0]
    assert rec["grad_norm"] > clip
    # SGD's first step moves the parameters by lr * clipped gradient, whose global norm is exactly `clip`
    update = torch.cat([(p.detach() - b).flatten() for p, b in zip(tr.model.parameters(), before)])
    assert update.norm().item() == pytest.approx(lr * clip, rel=1e-4)


# --------------------------------------------------------------------------------------------------------
# logs, history, repeated fit
# --------------------------------------------------------------------------------------------------------

def test_logs_csv_tensorboard_and_train_log(tmp_path):
    tr = trainer(out_dir=tmp_path, tensorboard=True, log_every=2, steps=4, progress=True)
    tr.fit()
    with open(tmp_path / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3]
    assert set(rows[0]) == {"step", "batch", "loss", "loss_objectness", "loss_rpn_box_reg", "loss_classifier",
                            "loss_box_reg", "loss_mil", "alpha", "lr", "grad_norm", "mil_images", "time"}
    assert float(rows[0]["lr"]) == 5e-4 and float(rows[0]["alpha"]) == 0.5
    # every weak image of a joint step gets the MIL loss (no teacher gate here)
    assert [int(r["mil_images"]) for r in rows] == [tr.config.batch_weak] * 4
    mil = tr.mil_summary()
    assert mil["image_steps"] == 4 * tr.config.batch_weak and 0 < mil["reached"] <= mil["weak_images"]
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    log = (tmp_path / "train.log").read_text()
    assert "world size 1" in log and "checkpoint step 4" in log


def test_fit_twice_continues_and_history_roundtrips(tmp_path):
    tr = trainer(steps=3)
    tr.fit()
    hist = tr.fit(steps=5)
    assert hist.steps == [0, 1, 2, 3, 4]
    hist.to_csv(tmp_path / "h.csv")
    with open(tmp_path / "h.csv") as f:
        assert [float(r["loss"]) for r in csv.DictReader(f)] == pytest.approx(hist.losses)
    assert isinstance(hist[1:3], History) and len(hist[1:3]) == 2
    with pytest.raises(KeyError, match="no column 'nope'"):
        hist.column("nope")


# --------------------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------------------

def test_bad_configurations_are_refused():
    with pytest.raises(ValueError, match="needs weak"):
        Trainer(FakeDetector(), TinyBoxes(4, "strong"), None, mode="joint")
    with pytest.raises(ValueError, match="needs strong"):
        Trainer(FakeDetector(), None, TinyBoxes(4, "weak"), mode="strong")
    with pytest.raises(ValueError, match="joint mode only"):
        Trainer(FakeDetector(), TinyBoxes(4, "strong"), mode="strong", mixing="alternating")
    with pytest.raises(ValueError, match="mode must be one of"):
        Trainer(FakeDetector(), TinyBoxes(4, "strong"), mode="semi")
    with pytest.raises(ValueError, match="batch_weak must be an integer >= 1"):
        Trainer(FakeDetector(), TinyBoxes(4, "strong"), TinyBoxes(4, "weak"), batch_weak=0)
    with pytest.raises(ValueError, match="unknown alpha schedule"):
        Trainer(FakeDetector(), TinyBoxes(4, "strong"), TinyBoxes(4, "weak"), alpha="fast")
    with pytest.raises(ValueError, match="the weak dataset is empty"):
        Trainer(FakeDetector(), TinyBoxes(4, "strong"), TinyBoxes(0, "weak"))
    with pytest.raises(ValueError, match="resume=True needs out_dir"):
        trainer().fit(resume=True)
    with pytest.raises(ValueError, match="kind 'weak' was passed as the strong set"):
        Trainer(FakeDetector(), TinyBoxes(4, "weak"), mode="strong")
    with pytest.warns(UserWarning, match="mode 'strong' does not use the 4 weak images"):
        Trainer(FakeDetector(), TinyBoxes(4, "strong"), TinyBoxes(4, "weak"), mode="strong")
    with pytest.warns(UserWarning, match="does not use the 4 strong images .*pass them in `weak`"):
        Trainer(FakeDetector(), TinyBoxes(4, "strong"), TinyBoxes(4, "weak"), mode="weak")


def test_a_boxed_dataset_in_the_weak_stream_is_an_error():
    with pytest.raises(ValueError, match="kind 'strong' was passed as the weak set"):
        Trainer(FakeDetector(), TinyBoxes(4, "strong"), TinyBoxes(4, "strong"))

    class NoRole(torch.utils.data.Dataset):      # a user dataset that does not say what it is
        def __init__(self):
            self.inner = TinyBoxes(4, "strong")

        def __len__(self):
            return len(self.inner)

        def __getitem__(self, key):
            return self.inner[key]

    tr = Trainer(FakeDetector(), TinyBoxes(4, "strong"), NoRole(), progress=False, tensorboard=False)
    with pytest.raises(ValueError, match=r"weak stream item \d+: a weak target must hold 'image_label' and no"):
        tr.fit(steps=1)


def test_a_model_missing_a_loss_term_is_an_error():
    class NoMil(FakeDetector):
        def forward(self, images, targets=None):
            out = super().forward(images, targets)
            out.pop("loss_mil")
            return out

    with pytest.raises(KeyError, match=r"lacks \['loss_mil'\]"):
        trainer(model=NoMil()).fit(steps=1)


def test_weak_samples_in_the_strong_list_are_named():
    from wsbus.data import DataError, Sample
    import numpy as np

    weak = Sample(np.zeros((8, 8), np.uint8), None, None, 1, "case-17")
    with pytest.raises(DataError, match="case-17"):
        Trainer(FakeDetector(), [weak], mode="strong")


# --------------------------------------------------------------------------------------------------------
# the real tiny detector on the phantom
# --------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def phantom():
    from wsbus.data import make_phantom

    data = make_phantom(100, seed=0, size=128)
    masses = [s for s in data if len(s.boxes)]
    return masses[:-30], masses[-30:]


def _tiny(seed=0):
    from wsbus.models import build_detector

    torch.manual_seed(seed)
    return build_detector("tiny")


@pytest.mark.slow
def test_tiny_detector_learns_to_localise_the_phantom_masses(phantom):
    from torchvision.ops import box_iou

    from wsbus.data import DetectionDataset

    train, test = phantom
    model = _tiny()
    tr = Trainer(model, train, mode="strong", batch_strong=2, steps=80, lr=1e-3, seed=0, progress=False,
                 tensorboard=False)
    hist = tr.fit()
    first, last = sum(hist.losses[:10]) / 10, sum(hist.losses[-10:]) / 10
    assert last < 0.9 * first, (first, last)

    # Top-1 localisation (class-agnostic IoU > 0.5) against random boxes of the training masses' sizes.
    model.eval()
    model.roi_heads.score_thresh = 0.0
    g = torch.Generator().manual_seed(0)
    sizes = torch.tensor([[s.boxes[0, 2] - s.boxes[0, 0], s.boxes[0, 3] - s.boxes[0, 1]] for s in train])
    hits, chance = [], []
    ds = DetectionDataset(test, kind="eval")
    with torch.no_grad():
        for i in range(len(ds)):
            image, target = ds[i]
            det = model([image])[0]
            hits.append(len(det["boxes"]) > 0 and bool(box_iou(det["boxes"][:1], target["boxes"]).max() > 0.5))
            h, w = image.shape[-2:]
            wh = sizes[torch.randint(len(sizes), (500,), generator=g)]
            x1 = torch.rand(500, generator=g) * (w - wh[:, 0])
            y1 = torch.rand(500, generator=g) * (h - wh[:, 1])
            rand = torch.stack([x1, y1, x1 + wh[:, 0], y1 + wh[:, 1]], 1)
            chance.append(float((box_iou(rand, target["boxes"]).max(1).values > 0.5).float().mean()))
    top1, base = sum(hits) / len(hits), sum(chance) / len(chance)
    assert top1 > base + 0.3, (top1, base)


def test_tiny_detector_joint_and_weak_modes_give_finite_losses(phantom):
    train, _ = phantom
    strong, weak = train[:10], train[10:]
    for mode, mixing in (("joint", "combined"), ("joint", "alternating"), ("weak", "combined")):
        tr = Trainer(_tiny(), strong if mode != "weak" else None, weak, mode=mode, mixing=mixing, steps=3,
                     progress=False, tensorboard=False, alpha="gradual")
        hist = tr.fit()
        assert all(math.isfinite(r[k]) for r in hist for k in ("loss", "loss_mil", "loss_classifier"))
        assert any(r["loss_mil"] > 0 for r in hist)
        if mode == "joint" and mixing == "combined":
            assert all(r["loss_objectness"] > 0 and r["loss_mil"] > 0 for r in hist)


def test_tiny_detector_resume_is_exact(phantom, tmp_path):
    train, _ = phantom
    strong, weak = train[:10], train[10:]

    def make(seed):
        return Trainer(_tiny(seed), strong, weak, mode="joint", steps=5, checkpoint_every=2, out_dir=tmp_path / "r",
                       progress=False, tensorboard=False)

    ref = Trainer(_tiny(), strong, weak, mode="joint", steps=5, progress=False, tensorboard=False)
    ref.fit()
    make(0).fit(steps=3)
    resumed = make(7)
    resumed.fit(resume=True)
    for (k, a), b in zip(ref.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_cosine_learning_rate_schedule_by_hand_and_recorded():
    import math

    from wsbus.engine import TrainerConfig

    cfg = TrainerConfig(lr=1e-3, lr_schedule="cosine", lr_floor=0.1, steps=10)
    assert cfg.lr_at(0) == pytest.approx(1e-3) and cfg.lr_at(10) == pytest.approx(1e-4)
    assert cfg.lr_at(5) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2))))
    assert TrainerConfig(lr=1e-3).lr_at(7) == 1e-3
    with pytest.raises(ValueError, match="lr_floor"):
        TrainerConfig(lr_floor=2.0)
    tr = trainer(steps=4, lr=1e-3, lr_schedule="cosine", lr_floor=0.0)
    history = tr.fit()
    assert history.column("lr") == pytest.approx([tr.config.lr_at(k, 4) for k in range(4)])
