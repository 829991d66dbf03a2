"""Implementation of :mod:`wsbus.evaluate`, one job per module.

- :mod:`wsbus.metrics.inputs` -- the detections and ground truth, parsed and checked; threshold ranges;
- :mod:`wsbus.metrics.corloc` -- CorLoc, the paper's metric (:data:`CORLOC_SCORE_THRESH`, the one default);
- :mod:`wsbus.metrics.ap` -- AP50 and AP@[.5:.95] by the COCO protocol, equal to pycocotools' ``COCOeval``;
- :mod:`wsbus.metrics.froc` -- the reference code's FROC curves, and the lesion-level FROC with its CPM score;
- :mod:`wsbus.metrics.image_level` -- image-level AUC, sensitivity / specificity, false positives per normal image;
- :mod:`wsbus.metrics.report` -- :func:`evaluate_detections`: all of the above in one :class:`DetectionReport`;
- :mod:`wsbus.metrics.stats` -- bootstrap confidence intervals and paired tests;
- :mod:`wsbus.metrics.tables` -- Table II / IV / V-shaped result tables and ``results.json`` entries.

The public names are importable from here and from :mod:`wsbus.evaluate` (the documented place).
Taught in ``book/08_evaluation.md``.
"""
from .ap import COCO_IOU_THRESHOLDS, COCO_RECALL_THRESHOLDS, MAX_DETECTIONS, average_precision, coco_ap
from .corloc import CORLOC_IOU_THRESH, CORLOC_SCORE_THRESH, CorLocResult, corloc
from .froc import (FROC_FP_RATES, REFERENCE_FROC_THRESHOLDS, CPMResult, FROCResult, froc, froc_cpm,
                   interpolate_froc)
from .image_level import false_positives_per_normal_image, image_auc, image_scores, sensitivity_specificity
from .inputs import MASS_CLASSES, check_iou_thresh, check_score_thresh
from .report import CSV_COLUMNS, DetectionReport, ImageOutcome, evaluate_detections
from .stats import PairedTestResult, bootstrap_ci, bootstrap_means, mcnemar_exact, paired_test, percentile_interval
from .tables import (MethodResult, add_p_values, format_ci, format_p_value, format_percent, render_table,
                     results_table, to_json_methods)

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
