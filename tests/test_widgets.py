"""wsbus.widgets: the MoI explorer (ipywidgets) and its static fallback figure.

Most tests use a scripted detector whose proposals and class logits are fixed by hand, so that the proposal each
rule must pick is known in advance (worked out below); one test runs the real tiny detector and checks the
explorer against ``proposal_logits`` + ``select_moi`` called directly.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

from wsbus.data import Sample, make_phantom
from wsbus.mil import MOI_RULES, select_moi
from wsbus.widgets import MoIExplorer, ProposalCache, moi_explorer, static_moi_figure

PNG = b"\x89PNG\r\n\x1a\n"

# Image A (64 x 64): five proposals and their class logits (normal, benign, malignant).
PROPOSALS_A = torch.tensor([[0.0, 0.0, 20.0, 20.0],     # r0
                            [20.0, 10.0, 40.0, 30.0],   # r1: IoU 1/3 with the ground truth [10, 10, 30, 30]
                            [10.0, 10.0, 30.0, 30.0],   # r2: the ground truth itself
                            [40.0, 40.0, 60.0, 60.0],   # r3
                            [5.0, 40.0, 25.0, 60.0]])   # r4
LOGITS_A = torch.tensor([[2.0, 0.0, 0.0],
                         [0.0, 3.0, 0.0],    # p_B = e^3 / (e^3 + 2) = 0.909: the most benign by probability
                         [0.0, 0.0, 2.5],    # p_M = e^2.5 / (e^2.5 + 2) = 0.859: the most malignant (both ways)
                         [-3.0, 1.0, 1.2],   # p_N = 0.0082: the most abnormal (both ways)
                         [5.0, 4.0, 0.0]])   # logit_B = 4, the largest, but p_B = 0.268
# Hand-worked choices (see the comments above); most_discriminative = max over r of max(p_B, p_M) -> r1 (0.909).
EXPECTED_A = {("most_benign", "prob"): 1, ("most_discriminative", "prob"): 1, ("most_malignant", "prob"): 2,
              ("most_abnormal", "prob"): 3, ("most_benign", "logit"): 4, ("most_discriminative", "logit"): 4,
              ("most_malignant", "logit"): 2, ("most_abnormal", "logit"): 3}
# Image B (64 x 96): the same rows in reverse order, so every rule picks a different box than on image A.
PROPOSALS_B, LOGITS_B = PROPOSALS_A.flip(0) + torch.tensor([30.0, 0.0, 30.0, 0.0]), LOGITS_A.flip(0)


class ScriptedDetector(nn.Module):
    """Returns the fixed proposals / logits above, by image width; counts its passes and the devices it saw."""

    def __init__(self, empty: bool = False, bad_logits: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.calls, self.devices, self.empty, self.bad_logits = 0, [], empty, bad_logits

    def proposal_logits(self, images):
        out = []
        for img in images:
            self.calls += 1
            self.devices.append(img.device.type)
            assert img.dtype == torch.float32 and img.shape[0] == 1 and float(img.max()) <= 1.0
            props, logits = (PROPOSALS_A, LOGITS_A) if img.shape[-1] == 64 else (PROPOSALS_B, LOGITS_B)
            if self.empty:
                props, logits = props[:0], logits[:0]
            if self.bad_logits:
                logits = logits[:, :2]
            out.append((props.to(img.device), logits.to(img.device)))
        return out


def _samples():
    rng = np.random.default_rng(0)
    a = Sample(rng.integers(0, 256, (64, 64), dtype=np.uint8), [[10, 10, 30, 30]], [2], 2, id="A", patient="p1")
    b = Sample(rng.integers(0, 256, (64, 96), dtype=np.uint8), None, None, 1, id="B", patient="p2")
    return [a, b]


def test_explorer_builds_and_its_controls_change_the_chosen_box():
    model = ScriptedDetector()
    ex = moi_explorer(model, _samples(), device="cpu")
    assert isinstance(ex, MoIExplorer)
    import ipywidgets

    assert isinstance(ex, ipywidgets.Widget)
    # Initial state: image A, the paper's rule (most_malignant), by probability -> r2, the ground-truth box.
    assert (ex.choice.image, ex.choice.rule, ex.choice.by, ex.choice.index) == (0, "most_malignant", "prob", 2)
    assert torch.equal(ex.choice.box, PROPOSALS_A[2])
    assert ex.choice.iou == pytest.approx(1.0)
    first_picture = bytes(ex.picture.value)
    assert first_picture.startswith(PNG)

    # Setting a control's value fires the widget's callback: the chosen box changes.
    ex.rule_select.value = "most_benign"
    assert ex.choice.index == 1 and torch.equal(ex.choice.box, PROPOSALS_A[1])
    assert ex.choice.iou == pytest.approx(1 / 3)   # overlap 200 / union 600
    assert bytes(ex.picture.value) != first_picture
    ex.by_select.value = "logit"                   # the reference code's choice differs from the paper's
    assert ex.choice.index == 4 and torch.equal(ex.choice.box, PROPOSALS_A[4])

    # Calling the callback directly after changing controls without notification gives the same answer.
    ex.rule_select.unobserve(ex._on_change, names="value")
    ex.rule_select.value = "most_abnormal"
    assert ex.choice.index == 4                    # not notified yet
    ex._on_change({"name": "value", "new": "most_abnormal"})
    assert ex.choice.index == 3

    ex.image_select.value = 1                      # image B: the rows are reversed
    assert ex.choice.index == 4 - 3 and torch.equal(ex.choice.box, PROPOSALS_B[1])
    assert np.isnan(ex.choice.iou)                 # weak image: no ground truth
    assert "<b>B</b> (benign)" in ex.info.value and "no ground truth" in ex.info.value
    # Proposals and logits were computed once per image, not once per event.
    assert model.calls == 2 and set(model.devices) == {"cpu"}
    assert repr(ex) == ("MoIExplorer(2 images, rules=['most_benign', 'most_discriminative', 'most_malignant', "
                        "'most_abnormal'], by='logit')")


@pytest.mark.parametrize("rule", MOI_RULES)
@pytest.mark.parametrize("by", ["prob", "logit"])
def test_every_rule_picks_the_hand_worked_proposal(rule, by):
    cache = ProposalCache(ScriptedDetector(), _samples())
    choice = cache.choose(0, rule, by)
    assert choice.index == EXPECTED_A[(rule, by)]
    assert torch.allclose(choice.probs, torch.softmax(LOGITS_A[choice.index], 0))
    assert torch.equal(choice.logits, LOGITS_A[choice.index])
    assert choice.n_proposals == 5
    # Image B holds the same rows reversed.
    assert cache.choose(1, rule, by).index == 4 - EXPECTED_A[(rule, by)]
    assert cache.calls == 2


def test_hand_worked_probabilities():
    p = torch.softmax(LOGITS_A, dim=1)
    assert float(p[1, 1]) == pytest.approx(np.exp(3) / (np.exp(3) + 2), abs=1e-6)
    assert float(p[4, 1]) == pytest.approx(np.exp(4) / (np.exp(5) + np.exp(4) + 1), abs=1e-6)
    assert float(p[3, 0]) == pytest.approx(np.exp(-3) / (np.exp(-3) + np.exp(1) + np.exp(1.2)), abs=1e-6)
    assert int(p[:, 1].argmax()) == 1 and int(LOGITS_A[:, 1].argmax()) == 4


def test_explorer_starting_state_and_rule_subset():
    ex = moi_explorer(ScriptedDetector(), _samples(), rules=["most_benign", "most_abnormal"], by="logit", image=1)
    assert ex.rule_select.options == ("most_benign", "most_abnormal")
    assert (ex.choice.image, ex.choice.rule, ex.choice.index) == (1, "most_benign", 0)
    assert ex.image_select.options[0] == ("0: A (malignant)", 0)


def test_static_figure_renders_to_png():
    model = ScriptedDetector()
    fig = static_moi_figure(model, _samples(), top_k=3)
    axes = fig.get_axes()
    assert len(axes) == 2 * len(MOI_RULES)
    assert [ax.get_title() for ax in axes[: len(MOI_RULES)]] == list(MOI_RULES)
    # The caption of panel (image A, most_malignant) gives r2's probabilities and its IoU with the ground truth.
    p = torch.softmax(LOGITS_A[2], 0)
    assert axes[2].get_xlabel() == f"N {p[0]:.2f} · B {p[1]:.2f} · M {p[2]:.2f} · IoU 1.00"
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=50)
    assert buf.getvalue().startswith(PNG) and len(buf.getvalue()) > 1000
    assert model.calls == 2


def test_static_figure_reuses_the_explorers_cache():
    model = ScriptedDetector()
    ex = moi_explorer(model, _samples())
    ex.image_select.value = 1
    fig = static_moi_figure(None, None, cache=ex.cache, rules=["most_malignant"])
    assert len(fig.get_axes()) == 2 and model.calls == 2


def test_real_tiny_detector_matches_select_moi():
    torch.manual_seed(0)
    from wsbus.models import build_detector

    model = build_detector("tiny").eval()
    samples = make_phantom(2, seed=3, size=96)
    ex = moi_explorer(model, samples, device="cpu", top_k=5)
    for i, s in enumerate(samples):
        image = torch.from_numpy(s.image).float()[None] / 255
        proposals, logits = model.proposal_logits([image])[0]
        for rule in ("most_malignant", "most_abnormal"):
            ex.image_select.value = i
            ex.rule_select.value = rule
            k = select_moi(logits, rule)
            assert ex.choice.index == k
            assert torch.allclose(ex.choice.box, proposals[k], atol=1e-4)
    assert ex.cache.calls == 2


def test_bad_input_is_refused_with_a_clear_message():
    samples = _samples()
    with pytest.raises(ValueError, match="unknown MoI rule"):
        moi_explorer(ScriptedDetector(), samples, rules=["most_suspicious"])
    with pytest.raises(ValueError, match="by must be one of"):
        moi_explorer(ScriptedDetector(), samples, by="score")
    with pytest.raises(ValueError, match="not among the explorer's rules"):
        moi_explorer(ScriptedDetector(), samples, rules=["most_benign"], rule="most_malignant")
    with pytest.raises(ValueError, match="at least one image"):
        moi_explorer(ScriptedDetector(), [])
    with pytest.raises(TypeError, match=r"samples\[1\]: expected a wsbus.data.Sample"):
        moi_explorer(ScriptedDetector(), [samples[0], "image.png"])
    with pytest.raises(TypeError, match="no proposal_logits"):
        moi_explorer(nn.Linear(2, 2), samples)
    with pytest.raises(IndexError, match="out of range for 2 images"):
        moi_explorer(ScriptedDetector(), samples, image=5)
    with pytest.raises(ValueError, match="sample 'A': the detector proposed no region"):
        moi_explorer(ScriptedDetector(empty=True), samples)
    with pytest.raises(ValueError, match=r"sample 'A': logits must be \[R, 3\]"):
        static_moi_figure(ScriptedDetector(bad_logits=True), samples)
    dup = [samples[0], Sample(samples[1].image, None, None, 1, id="A")]
    with pytest.raises(ValueError, match="unique"):
        ProposalCache(ScriptedDetector(), dup)
