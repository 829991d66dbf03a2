"""A tiny detector and dataset honouring wsbus's contracts, for fast tests of the training machinery.

``FakeDetector`` follows the detector contract of design.md section 3: in training mode
``model(images, targets)`` returns the five loss terms (``loss_mil`` for weak targets, the four Faster R-CNN
terms for strong ones, zeros connected to the graph when absent); in eval mode a list of
``dict(boxes, labels, scores)``; ``proposal_logits(images)``; ``config`` rebuilds it. It keeps the properties
the Trainer must cope with:

* it draws from the global torch RNG in training (``torch.randperm`` picks the sampled proposals, like
  torchvision's ``BalancedPositiveNegativeSampler``), so exact resume needs the RNG handled;
* its ``rpn`` head receives no gradient in a weak-only step (the absent RPN terms are zeros connected to the
  classifier only), which DistributedDataParallel must be told about;
* ``nan_at_call`` makes the ``k``-th training forward return NaN losses (NaN-guard tests).

``TinyBoxes`` is a map-style dataset of synthetic images with one bright box each, whose ``__getitem__``
takes ``i`` or ``(i, aug_seed)`` as ``wsbus.data.dataset.DetectionDataset`` does.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import box_iou, roi_align


def _grid_proposals(h: int, w: int, device) -> torch.Tensor:
    # 4 x 4 windows of half the image size, stride a sixth: 16 proposals covering the image.
    xs = torch.linspace(0, 0.5, 4, device=device)
    x1, y1 = torch.meshgrid(xs * w, xs * h, indexing="xy")
    x1, y1 = x1.reshape(-1), y1.reshape(-1)
    return torch.stack([x1, y1, x1 + 0.5 * w, y1 + 0.5 * h], dim=1)


class FakeDetector(nn.Module):
    """A few thousand parameters: conv features, RoIAlign on 16 fixed proposals, RPN/classifier/box heads."""

    def __init__(self, num_classes: int = 3, channels: int = 6, sampled: int = 8,
                 nan_at_call: Optional[int] = None) -> None:
        super().__init__()
        self.config = {"backbone": "fake", "num_classes": num_classes, "channels": channels, "sampled": sampled}
        self.features = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU())
        feat = channels * 2 * 2
        self.rpn = nn.Linear(feat, 5)            # objectness + 4 proposal deltas
        self.classifier = nn.Linear(feat, num_classes)
        self.box = nn.Linear(feat, 4)
        self.sampled = sampled
        self.coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.nan_at_call = nan_at_call
        self.calls = 0

    def _heads(self, image: torch.Tensor):
        h, w = image.shape[-2:]
        fmap = self.features(image[None])
        props = _grid_proposals(h, w, image.device)
        roi = roi_align(fmap, [props], output_size=2, spatial_scale=1.0, aligned=True).flatten(1)
        return props, roi

    def proposal_logits(self, images: List[torch.Tensor]):
        """Per image ``(proposals [R,4], class logits [R,3])``."""
        out = []
        for img in images:
            props, roi = self._heads(img)
            out.append((props, self.classifier(roi)))
        return out

    def forward(self, images: List[torch.Tensor], targets: Optional[List[Dict]] = None):
        if not self.training:
            dets = []
            for props, logits in self.proposal_logits(images):
                p = logits.softmax(1)
                scores, labels = p[:, 1:].max(1)
                dets.append({"boxes": props, "labels": labels + 1, "scores": scores})
            return dets
        if targets is None or len(targets) != len(images):
            raise ValueError("training needs one target per image")
        self.calls += 1
        strong_terms: Dict[str, List[torch.Tensor]] = {k: [] for k in
                                                        ("loss_objectness", "loss_rpn_box_reg", "loss_classifier",
                                                         "loss_box_reg")}
        mil: List[torch.Tensor] = []
        anchor = None
        for img, tgt in zip(images, targets):
            props, roi = self._heads(img)
            logits = self.classifier(roi)
            anchor = logits.sum() * 0.0 if anchor is None else anchor
            if "boxes" in tgt:
                rpn = self.rpn(roi)
                gt, gl = tgt["boxes"], tgt["labels"]
                if len(gt):
                    iou, match = box_iou(props, gt).max(1)
                    pos = iou >= 0.3
                    labels = torch.where(pos, gl[match], torch.zeros_like(match))
                    reg_t = self.coder.encode_single(gt[match], props)
                else:
                    pos = torch.zeros(len(props), dtype=torch.bool, device=img.device)
                    labels = torch.zeros(len(props), dtype=torch.int64, device=img.device)
                    reg_t = torch.zeros_like(props)
                idx = torch.randperm(len(props), device=img.device)[: self.sampled]   # global RNG, on purpose
                n = max(1, int(pos[idx].sum()))
                strong_terms["loss_objectness"].append(
                    F.binary_cross_entropy_with_logits(rpn[idx, 0], pos[idx].float()))
                strong_terms["loss_rpn_box_reg"].append(
                    F.smooth_l1_loss(rpn[idx, 1:][pos[idx]], reg_t[idx][pos[idx]], reduction="sum") / n)
                strong_terms["loss_classifier"].append(F.cross_entropy(logits[idx], labels[idx]))
                strong_terms["loss_box_reg"].append(
                    F.smooth_l1_loss(self.box(roi)[idx][pos[idx]], reg_t[idx][pos[idx]], reduction="sum") / n)
            else:
                y = torch.as_tensor(tgt["image_label"], device=img.device).reshape(1)
                moi = int(logits.softmax(1)[:, 2].argmax())
                mil.append(F.cross_entropy(logits[moi:moi + 1], y))
        out = {k: (torch.stack(v).mean() if v else anchor) for k, v in strong_terms.items()}
        out["loss_mil"] = torch.stack(mil).mean() if mil else anchor
        if self.nan_at_call is not None and self.calls == self.nan_at_call:
            out["loss_mil"] = out["loss_mil"] * float("nan")
        return out


class TinyBoxes(torch.utils.data.Dataset):
    """``n`` grey ``size`` x ``size`` images with one bright box (benign: wide, malignant: tall)."""

    def __init__(self, n: int = 12, kind: str = "strong", size: int = 24, seed: int = 0) -> None:
        if kind not in ("strong", "weak"):
            raise ValueError(kind)
        g = torch.Generator().manual_seed(seed)
        self.kind, self.items = kind, []
        for _ in range(n):
            label = int(torch.randint(1, 3, (1,), generator=g))
            bw, bh = (10, 6) if label == 1 else (6, 10)
            x = int(torch.randint(0, size - bw, (1,), generator=g))
            y = int(torch.randint(0, size - bh, (1,), generator=g))
            img = 0.2 + 0.05 * torch.rand(1, size, size, generator=g)
            img[:, y:y + bh, x:x + bw] = 0.9
            self.items.append((img, torch.tensor([[x, y, x + bw, y + bh]], dtype=torch.float32), label))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key):
        i, aug_seed = key if isinstance(key, tuple) else (key, None)
        img, boxes, label = self.items[i]
        img, boxes = img.clone(), boxes.clone()
        if aug_seed is not None:   # a flip and a little noise, drawn from the item's own seed only
            g = torch.Generator().manual_seed(int(aug_seed))
            if torch.rand((), generator=g) < 0.5:
                w = img.shape[-1]
                img = img.flip(-1)
                boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
            img = (img + 0.02 * torch.randn(img.shape, generator=g)).clamp(0, 1)
        if self.kind == "strong":
            return img, {"boxes": boxes, "labels": torch.tensor([label]), "image_label": label, "index": i}
        return img, {"image_label": torch.tensor(label), "index": i}
