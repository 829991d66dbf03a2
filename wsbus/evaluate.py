"""Evaluation of mass localisation and classification: the numbers of the paper's Tables II, IV and V, and the
detection field's standard metrics beside them.

- :func:`corloc` -- correct localisation per class and overall, with per-image outcomes (:class:`CorLocResult`);
  :data:`CORLOC_SCORE_THRESH` (0.5) is its one default score threshold;
- :func:`coco_ap` -- AP50 and AP@[.5:.95] per class and mAP by the COCO protocol, equal to pycocotools'
  ``COCOeval``; :func:`average_precision` at one IoU threshold;
- :func:`froc` (the reference code's FROC curves, :class:`FROCResult`) and :func:`froc_cpm` (the lesion-level FROC
  of LUNA16 / nnDetection and its CPM, :class:`CPMResult`);
- :func:`image_scores`, :func:`image_auc` (normal vs mass, and the malignancy AUC), :func:`sensitivity_specificity`,
  :func:`false_positives_per_normal_image`;
- :func:`evaluate_detections` gathering them all in a :class:`DetectionReport` (``as_json()`` for
  ``results.json``, ``write_csv()`` for the per-image hits and misses);
- :func:`bootstrap_ci`, :func:`bootstrap_means`, :func:`paired_test` (:class:`PairedTestResult`),
  :func:`mcnemar_exact` -- the paper's bootstrap CIs and paired tests, plus McNemar's exact test;
- :func:`results_table`, :class:`MethodResult`, :func:`add_p_values`, :func:`to_json_methods` -- Table II / IV /
  V-shaped tables and the ``results.json`` entries written by ``wsbus demo``.

Everything takes torchvision-style dicts of tensors (``boxes``, ``labels``, ``scores``), on any device.
The implementation lives in :mod:`wsbus.metrics` (one module per job); these are the public names.

Taught in ``book/08_evaluation.md``.
"""
from .metrics.ap import COCO_IOU_THRESHOLDS, COCO_RECALL_THRESHOLDS, MAX_DETECTIONS, average_precision, coco_ap
from .metrics.corloc import CORLOC_IOU_THRESH, CORLOC_SCORE_THRESH, CorLocResult, corloc
from .metrics.froc import (FROC_FP_RATES, REFERENCE_FROC_THRESHOLDS, CPMResult, FROCResult, froc, froc_cpm,
                           interpolate_froc)
from .metrics.image_level import false_positives_per_normal_image, image_auc, image_scores, sensitivity_specificity
from .metrics.inputs import MASS_CLASSES, check_iou_thresh, check_score_thresh
from .metrics.report import CSV_COLUMNS, DetectionReport, ImageOutcome, evaluate_detections
from .metrics.stats import (
    PairedTestResult,
    bootstrap_ci,
    bootstrap_means,
    mcnemar_exact,
    paired_test,
    percentile_interval,
)
from .metrics.tables import (
    MethodResult,
    add_p_values,
    format_ci,
    format_p_value,
    format_percent,
    render_table,
    results_table,
    to_json_methods,
)

__all__ = [
    "MASS_CLASSES", "check_iou_thresh", "check_score_thresh",
    "CORLOC_SCORE_THRESH", "CORLOC_IOU_THRESH", "CorLocResult", "corloc",
    "COCO_IOU_THRESHOLDS", "COCO_RECALL_THRESHOLDS", "MAX_DETECTIONS", "coco_ap", "average_precision",
    "FROC_FP_RATES", "REFERENCE_FROC_THRESHOLDS", "FROCResult", "froc", "CPMResult", "froc_cpm", "interpolate_froc",
    "image_scores", "image_auc", "sensitivity_specificity", "false_positives_per_normal_image",
    "CSV_COLUMNS", "DetectionReport", "ImageOutcome", "evaluate_detections",
    "PairedTestResult", "bootstrap_ci", "bootstrap_means", "mcnemar_exact", "paired_test", "percentile_interval",
    "MethodResult", "add_p_values", "format_ci", "format_p_value", "format_percent", "render_table", "results_table",
    "to_json_methods",
]
