r"""Multiple-instance learning: which proposal is an image's *mass of interest* (MoI).

A weakly labelled image is a bag of region proposals :math:`R(I)`. With
:math:`p = \operatorname{softmax}` of the Fast R-CNN class logits over the columns (N, B, M), the paper
(Shin et al., TMI 2019, section III-B and Table II) defines four rules:

================================  ===============================================
rule                              :math:`x_{MoI}`
================================  ===============================================
``most_benign``                   :math:`\arg\max_r p_B(r)`
``most_discriminative``           :math:`\arg\max_r \max(p_B(r), p_M(r))`
``most_malignant``                :math:`\arg\max_r p_M(r)`
``most_abnormal``                 :math:`\arg\min_r p_N(r)`
================================  ===============================================

The rule is chosen per image from its label by a :class:`RuleMap`. Ties go to the lowest proposal index
(``torch.argmax`` semantics). ``by="logit"`` compares raw logits instead of probabilities, which is what the
authors' TF code does (``mil/core.py``); the two differ because a softmax probability depends on all three
logits of a region.

Taught in ``book/05_mil_moi.md``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Union

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from .data.formats import CLASSES

__all__ = [
    "MOI_RULES", "MOI_BY", "RuleMap", "PAPER", "REFERENCE_CODE", "TABLE_II", "RULE_MAPS",
    "as_rule_map", "rule_for_label", "rule_scores", "select_moi", "select_moi_batch",
]

MOI_RULES = ("most_benign", "most_discriminative", "most_malignant", "most_abnormal")
MOI_BY = ("prob", "logit")
_RULE_INDEX = {name: i for i, name in enumerate(MOI_RULES)}


def _check_rule(rule: str) -> int:
    try:
        return _RULE_INDEX[rule]
    except (KeyError, TypeError):
        raise ValueError(f"unknown MoI rule {rule!r}; choose one of {MOI_RULES}") from None


def _check_by(by: str) -> None:
    if by not in MOI_BY:
        raise ValueError(f"by must be one of {MOI_BY}, got {by!r}")


def rule_scores(class_logits: Tensor, by: str = "prob") -> Tensor:
    r"""The quantity each rule maximises, for every region: ``[..., R, 3] -> [..., R, 4]``.

    Column ``k`` belongs to ``MOI_RULES[k]``: :math:`p_B`, :math:`\max(p_B, p_M)`, :math:`p_M` and
    :math:`-p_N` (so that :math:`\arg\min_r p_N` is an argmax too). With ``by="logit"`` the same columns are
    computed from the logits :math:`s` instead of :math:`p`.

    Taught in ``book/05_mil_moi.md``.
    """
    _check_by(by)
    if class_logits.shape[-1] != 3:
        raise ValueError(f"class logits must have 3 columns (normal, benign, malignant), got shape "
                         f"{tuple(class_logits.shape)}")
    x = torch.softmax(class_logits, dim=-1) if by == "prob" else class_logits
    benign, malignant = x[..., 1], x[..., 2]
    return torch.stack([benign, torch.maximum(benign, malignant), malignant, -x[..., 0]], dim=-1)


def select_moi(class_logits: Tensor, rule: str, by: str = "prob") -> int:
    r"""Index of the mass of interest among one image's proposals.

    Parameters
    ----------
    class_logits : Tensor [R, 3]
        Fast R-CNN class logits (normal, benign, malignant) of the image's R >= 1 proposals.
    rule : str
        One of :data:`MOI_RULES`.
    by : {"prob", "logit"}
        Compare softmax probabilities (the paper) or raw logits (the reference code).

    Returns
    -------
    int
        The proposal index; ties resolve to the lowest index.

    Taught in ``book/05_mil_moi.md``.
    """
    k = _check_rule(rule)
    if class_logits.dim() != 2 or class_logits.shape[1] != 3:
        raise ValueError(f"select_moi: class_logits must be [R, 3], got shape {tuple(class_logits.shape)}")
    if class_logits.shape[0] == 0:
        raise ValueError("select_moi: the image has no proposals (R = 0); there is no mass of interest to pick")
    return int(torch.argmax(rule_scores(class_logits, by)[:, k]))


def select_moi_batch(
    class_logits: Union[Sequence[Tensor], Tensor],
    rules: Union[str, Sequence[str], Tensor],
    by: str = "prob",
    lengths: Optional[Union[Sequence[int], Tensor]] = None,
) -> Tensor:
    r""":func:`select_moi` for a batch of images in one vectorised pass (no per-image Python loop).

    Parameters
    ----------
    class_logits : list of Tensor [R_i, 3], or Tensor [B, R_max, 3]
        Per-image logits, or a padded batch whose valid rows per image are given by ``lengths``.
    rules : str, sequence of B str, or Tensor [B] of rule indices into :data:`MOI_RULES`
        The rule of each image (one string applies to all).
    by : {"prob", "logit"}
    lengths : sequence or Tensor [B], optional
        Number of valid proposals per image for a padded batch (default: all ``R_max``).

    Returns
    -------
    Tensor [B] int64
        The MoI index of each image within its own proposals, on the logits' device. Equal to calling
        :func:`select_moi` per image (tested).

    Taught in ``book/05_mil_moi.md``.
    """
    _check_by(by)
    valid: Optional[Tensor] = None  # [B, R_max] marks real rows (None: all rows are real)
    if isinstance(class_logits, Tensor):
        if class_logits.dim() != 3 or class_logits.shape[2] != 3:
            raise ValueError(f"select_moi_batch: a padded batch must be [B, R_max, 3], got "
                             f"{tuple(class_logits.shape)}")
        padded = class_logits
        b, r_max = padded.shape[:2]
    else:
        class_logits = list(class_logits)
        for i, lg in enumerate(class_logits):
            if lg.dim() != 2 or lg.shape[1] != 3:
                raise ValueError(f"select_moi_batch: logits of image {i} must be [R, 3], got {tuple(lg.shape)}")
        if lengths is not None:
            raise ValueError("select_moi_batch: lengths is only for a padded [B, R_max, 3] tensor")
        b = len(class_logits)
        if b == 0:
            return torch.zeros(0, dtype=torch.int64)
        padded = pad_sequence(class_logits, batch_first=True)
        r_max = padded.shape[1]
        host = [lg.shape[0] for lg in class_logits]
        empty = [i for i, n in enumerate(host) if n <= 0]
        if empty:
            raise ValueError(f"select_moi_batch: image(s) {empty} have no proposals; there is no mass of interest")
        if any(n != r_max for n in host):
            # ragged images: the mask is made on the device (no host-to-device copy of the lengths)
            valid = pad_sequence([torch.ones(n, dtype=torch.bool, device=padded.device) for n in host],
                                 batch_first=True)
    # Lengths known on the host (the list form) were checked there; explicit lengths of a padded batch need one
    # host-device synchronisation (to name the empty images).
    if lengths is not None:
        lengths_t = torch.as_tensor(lengths, dtype=torch.int64).to(padded.device).reshape(-1)
        if lengths_t.numel() != b:
            raise ValueError(f"select_moi_batch: {lengths_t.numel()} lengths for {b} images")
        empty = (lengths_t <= 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"select_moi_batch: image(s) {empty} have no proposals; there is no mass of interest")
        valid = torch.arange(r_max, device=padded.device)[None, :] < lengths_t[:, None]
    elif r_max == 0 and b:
        raise ValueError(f"select_moi_batch: image(s) {list(range(b))} have no proposals; there is no mass of "
                         f"interest")
    if isinstance(rules, str):
        rule_ids = torch.full((b,), _check_rule(rules), dtype=torch.int64, device=padded.device)
    elif isinstance(rules, Tensor):
        rule_ids = rules.to(device=padded.device, dtype=torch.int64).reshape(-1)
    else:
        rule_ids = torch.tensor([_check_rule(r) for r in rules], dtype=torch.int64, device=padded.device)
    if rule_ids.numel() != b:
        raise ValueError(f"select_moi_batch: {rule_ids.numel()} rules for {b} images")

    scores = rule_scores(padded, by)  # [B, R_max, 4]
    chosen = scores.gather(2, rule_ids.view(b, 1, 1).expand(b, r_max, 1)).squeeze(2)  # [B, R_max]
    if valid is not None:  # padded rows can never win
        chosen = chosen.masked_fill(~valid, float("-inf"))
    return chosen.argmax(dim=1)


@dataclass(frozen=True)
class RuleMap:
    r"""Which MoI rule to use for a weakly labelled image of each class.

    Parameters
    ----------
    normal : str
        Rule for normal images (label 0). The paper trains on benign and malignant weak images only. We use
        ``"most_abnormal"`` by default: the region the detector finds *least* normal is trained towards the
        normal class, which suppresses the hardest false positive of a scan without a mass. The reference
        class weights give normal images weight 0 (:data:`wsbus.losses.REFERENCE_MIL_WEIGHTS`), in which
        case this rule only matters with other weights.
    benign, malignant : str
        Rules for benign (label 1) and malignant (label 2) images.

    Taught in ``book/05_mil_moi.md``.
    """

    normal: str = "most_abnormal"
    benign: str = "most_malignant"
    malignant: str = "most_malignant"

    def __post_init__(self) -> None:
        for name in ("normal", "benign", "malignant"):
            _check_rule(getattr(self, name))

    def __getitem__(self, label: int) -> str:
        label = int(label)
        if label not in (0, 1, 2):
            raise ValueError(f"image label must be 0 (normal), 1 (benign) or 2 (malignant), got {label}")
        return (self.normal, self.benign, self.malignant)[label]

    def rule_ids(self, image_labels: Tensor) -> Tensor:
        """Vectorised lookup: rule index (into :data:`MOI_RULES`) of each image label, same device.
        """
        labels = image_labels.long()
        # Python scalars in torch.where: no lookup table is copied to the device (a sync on CUDA).
        return torch.where(labels == 0, _RULE_INDEX[self.normal],
                           torch.where(labels == 1, _RULE_INDEX[self.benign], _RULE_INDEX[self.malignant]))

    def as_dict(self) -> dict[int, str]:
        """``{0: rule, 1: rule, 2: rule}`` (plain data, for configs and checkpoints).
        """
        return {0: self.normal, 1: self.benign, 2: self.malignant}

    @property
    def name(self) -> str:
        """The Table II style name ``"<benign rule>/<malignant rule>"``. """
        return f"{self.benign}/{self.malignant}"


#: The paper's proposed map (Table II, "Proposed"): the most malignant region for both benign and malignant.
PAPER = RuleMap(benign="most_malignant", malignant="most_malignant")
#: What the authors' TF code trains with (``train_bus.py``: ``get_mass_max_logit`` for benign,
#: ``get_mal_max_logit`` for malignant), used with ``by="logit"``.
REFERENCE_CODE = RuleMap(benign="most_abnormal", malignant="most_malignant")
#: The MoI variants of Table II, keyed by their "benign / malignant" name.
TABLE_II = {
    m.name: m for m in (
        RuleMap(benign="most_benign", malignant="most_malignant"),
        RuleMap(benign="most_discriminative", malignant="most_malignant"),
        RuleMap(benign="most_abnormal", malignant="most_malignant"),
        PAPER,
    )
}
#: Every preset by name: ``"paper"``, ``"reference_code"`` and the Table II names.
RULE_MAPS = {"paper": PAPER, "reference_code": REFERENCE_CODE, **TABLE_II}


def as_rule_map(spec: Union[None, str, RuleMap, Mapping]) -> RuleMap:
    """A :class:`RuleMap` from ``None`` (the paper's map), a preset name of :data:`RULE_MAPS`, a
    ``"<benign rule>/<malignant rule>"`` string, a :class:`RuleMap`, or a mapping whose keys are labels
    (0/1/2, also as strings as after a JSON round trip) or class names (``"benign"``); missing labels keep
    the defaults of :class:`RuleMap`.
    """
    if spec is None:
        return PAPER
    if isinstance(spec, RuleMap):
        return spec
    if isinstance(spec, str):
        if spec in RULE_MAPS:
            return RULE_MAPS[spec]
        if spec.count("/") == 1:
            benign, malignant = spec.split("/")
            return RuleMap(benign=benign.strip(), malignant=malignant.strip())
        raise ValueError(f"unknown MoI rule map {spec!r}; use one of {sorted(RULE_MAPS)} or "
                         f"'<benign rule>/<malignant rule>' with rules from {MOI_RULES}")
    if isinstance(spec, Mapping):
        fields = {}
        for key, rule in spec.items():
            k = str(key).strip().lower()
            if k in CLASSES:
                name = k
            elif k in ("0", "1", "2"):
                name = CLASSES[int(k)]
            else:
                raise ValueError(f"MoI rule map key {key!r} is not a label (0, 1, 2) or class name {CLASSES}")
            fields[name] = rule
        return RuleMap(**fields)
    raise TypeError(f"cannot make a MoI rule map from {type(spec).__name__}: {spec!r}")


def rule_for_label(label: int, moi_rules: Union[None, str, RuleMap, Mapping] = None) -> str:
    """The MoI rule for an image label under ``moi_rules`` (default: the paper's :data:`PAPER`).

    Taught in ``book/05_mil_moi.md``.
    """
    return as_rule_map(moi_rules)[label]
