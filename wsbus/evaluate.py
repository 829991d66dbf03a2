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
from . import metrics
from .metrics import *  # noqa: F401,F403  (the public names of wsbus.metrics, listed in its __all__)

__all__ = list(metrics.__all__)
