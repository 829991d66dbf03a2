"""wsbus.mil: MoI rules against independent numpy computations, prob vs logit, batching, ties, rule maps."""
import numpy as np
import pytest
import torch

from wsbus.mil import (MOI_RULES, PAPER, REFERENCE_CODE, RULE_MAPS, TABLE_II, RuleMap, as_rule_map,
                       rule_for_label, select_moi, select_moi_batch)

torch.set_num_threads(1)


def _numpy_moi(logits: np.ndarray, rule: str, by: str) -> int:
    """Independent reference: the paper's table written with numpy."""
    if by == "prob":
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        x = e / e.sum(axis=1, keepdims=True)
    else:
        x = logits
    if rule == "most_benign":
        return int(np.argmax(x[:, 1]))
    if rule == "most_discriminative":
        return int(np.argmax(np.maximum(x[:, 1], x[:, 2])))
    if rule == "most_malignant":
        return int(np.argmax(x[:, 2]))
    if rule == "most_abnormal":
        return int(np.argmin(x[:, 0]))
    raise AssertionError(rule)


@pytest.mark.parametrize("by", ["prob", "logit"])
@pytest.mark.parametrize("rule", MOI_RULES)
def test_each_rule_matches_numpy(rule, by):
    rng = np.random.default_rng(7)
    for _ in range(25):
        logits = rng.normal(scale=3.0, size=(int(rng.integers(1, 40)), 3))
        assert select_moi(torch.tensor(logits), rule, by=by) == _numpy_moi(logits, rule, by)


# Hand-built cases where comparing probabilities and comparing raw logits pick different regions:
# a softmax probability depends on all three logits of a region.
PROB_VS_LOGIT = {
    # region 0 has the larger malignant logit (3 > 2) but p_M = e^3/(e^5+1+e^3) = 0.12 < e^2/(2+e^2) = 0.79
    "most_malignant": ([[5.0, 0.0, 3.0], [0.0, 0.0, 2.0]], 0, 1),
    # same with the benign column
    "most_benign": ([[5.0, 3.0, 0.0], [0.0, 2.0, 0.0]], 0, 1),
    # max(B, M) logit: region 0 (3) > region 1 (2); probabilities 0.12 < 0.79
    "most_discriminative": ([[5.0, 3.0, -1.0], [0.0, 2.0, 0.0]], 0, 1),
    # smallest normal logit: region 1 (0 < 1); p_N = e/(e+2e^5) = 0.009 in region 0 < 1/3 in region 1
    "most_abnormal": ([[1.0, 5.0, 5.0], [0.0, 0.0, 0.0]], 1, 0),
}


@pytest.mark.parametrize("rule", MOI_RULES)
def test_prob_and_logit_differ_on_hand_built_cases(rule):
    logits, by_logit, by_prob = PROB_VS_LOGIT[rule]
    t = torch.tensor(logits)
    assert select_moi(t, rule, by="logit") == by_logit
    assert select_moi(t, rule, by="prob") == by_prob
    for by, expected in (("logit", by_logit), ("prob", by_prob)):
        assert _numpy_moi(np.array(logits), rule, by) == expected


@pytest.mark.parametrize("by", ["prob", "logit"])
def test_batched_equals_per_image(by):
    g = torch.Generator().manual_seed(3)
    lengths = [1, 7, 30, 2, 15]
    logits = [torch.randn(n, 3, generator=g) * 2 for n in lengths]
    rules = [MOI_RULES[i % 4] for i in range(len(lengths))]
    expected = [select_moi(lg, r, by) for lg, r in zip(logits, rules)]
    assert select_moi_batch(logits, rules, by=by).tolist() == expected
    # padded form with lengths (padding filled with values that would win if it were not masked)
    padded = torch.full((len(lengths), max(lengths), 3), 50.0)
    padded[..., 0] = -50.0
    for i, lg in enumerate(logits):
        padded[i, : len(lg)] = lg
    assert select_moi_batch(padded, rules, by=by, lengths=lengths).tolist() == expected
    # rule indices as a tensor, and one rule for all
    ids = torch.tensor([MOI_RULES.index(r) for r in rules])
    assert select_moi_batch(logits, ids, by=by).tolist() == expected
    assert select_moi_batch(logits, "most_malignant", by=by).tolist() == [
        select_moi(lg, "most_malignant", by) for lg in logits]


def test_ties_resolve_to_lowest_index():
    same = torch.tensor([[0.1, 0.2, 0.3]] * 4)
    for rule in MOI_RULES:
        assert select_moi(same, rule) == 0
        assert select_moi(same, rule, by="logit") == 0
    tie_12 = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 4.0], [0.0, 0.0, 4.0]])
    assert select_moi(tie_12, "most_malignant") == 1
    assert select_moi(tie_12, "most_abnormal") == 1
    assert select_moi_batch([tie_12, same], ["most_malignant", "most_benign"]).tolist() == [1, 0]


def test_select_moi_errors():
    with pytest.raises(ValueError, match="unknown MoI rule"):
        select_moi(torch.zeros(3, 3), "most_suspicious")
    with pytest.raises(ValueError, match="no proposals"):
        select_moi(torch.zeros(0, 3), "most_malignant")
    with pytest.raises(ValueError, match=r"\[R, 3\]"):
        select_moi(torch.zeros(4, 2), "most_malignant")
    with pytest.raises(ValueError, match="by must be"):
        select_moi(torch.zeros(4, 3), "most_malignant", by="score")
    with pytest.raises(ValueError, match="no proposals"):
        select_moi_batch([torch.zeros(2, 3), torch.zeros(0, 3)], "most_malignant")
    with pytest.raises(ValueError, match="2 rules for 1 images"):
        select_moi_batch([torch.zeros(2, 3)], ["most_benign", "most_benign"])


def test_rule_map_presets():
    assert (PAPER[1], PAPER[2]) == ("most_malignant", "most_malignant")
    assert (REFERENCE_CODE[1], REFERENCE_CODE[2]) == ("most_abnormal", "most_malignant")
    assert set(TABLE_II) == {"most_benign/most_malignant", "most_discriminative/most_malignant",
                             "most_abnormal/most_malignant", "most_malignant/most_malignant"}
    for name, m in TABLE_II.items():
        assert (m.benign, m.malignant) == tuple(name.split("/")) and m.name == name
    assert RULE_MAPS["paper"] is PAPER and RULE_MAPS["reference_code"] is REFERENCE_CODE
    assert rule_for_label(1) == "most_malignant" and rule_for_label(1, "reference_code") == "most_abnormal"


def test_normal_images_use_most_abnormal_region():
    # Normal weak images: the region the detector finds least normal (argmin p_N) is their MoI; the MIL loss
    # then trains it towards the normal class, suppressing the hardest false positive.
    assert PAPER[0] == REFERENCE_CODE[0] == "most_abnormal"
    logits = torch.tensor([[3.0, 0.0, 0.0], [0.0, 1.0, 0.5], [2.0, 0.0, 0.0]])
    ids = PAPER.rule_ids(torch.tensor([0]))
    assert select_moi_batch([logits], ids).tolist() == [1]


def test_as_rule_map_forms():
    assert as_rule_map(None) is PAPER
    assert as_rule_map("most_benign/most_malignant") == RuleMap(benign="most_benign")
    # JSON round trip turns integer keys into strings
    m = RuleMap(normal="most_malignant", benign="most_discriminative", malignant="most_malignant")
    assert as_rule_map({str(k): v for k, v in m.as_dict().items()}) == m
    assert as_rule_map({"benign": "most_benign"}) == RuleMap(benign="most_benign")
    assert PAPER.rule_ids(torch.tensor([2, 1, 0])).tolist() == [2, 2, 3]
    with pytest.raises(ValueError, match="unknown MoI rule map"):
        as_rule_map("paper2")
    with pytest.raises(ValueError, match="unknown MoI rule"):
        RuleMap(benign="largest")
    with pytest.raises(ValueError, match="not a label"):
        as_rule_map({"cyst": "most_benign"})
    with pytest.raises(ValueError, match="image label"):
        PAPER[3]
