"""Evaluation of mass localisation and classification: the numbers of the paper's Tables II, IV and V.

- :func:`corloc` -- correct localisation per class and overall, with per-image outcomes (:class:`CorLocResult`);
- :func:`average_precision`, :func:`image_scores`, :func:`image_auc`, :func:`sensitivity_specificity`,
  :func:`false_positives_per_normal_image`, and :func:`evaluate_detections` gathering them all;
- :func:`bootstrap_ci`, :func:`bootstrap_means`, :func:`paired_test` (:class:`PairedTestResult`),
  :func:`mcnemar_exact` -- the paper's bootstrap CIs and paired tests, plus McNemar's exact test;
- :func:`results_table`, :class:`MethodResult`, :func:`add_p_values`, :func:`to_json_methods` -- Table II / IV /
  V-shaped tables and the ``results.json`` entries written by ``wsbus demo``.

Everything takes torchvision-style dicts of tensors (``boxes``, ``labels``, ``scores``), on any device.
The implementation lives in :mod:`wsbus.metrics`; these are the public names.

Taught in ``book/08_evaluation.md``.
"""
from .metrics.detection import (
    MASS_CLASSES,
    CorLocResult,
    FROCResult,
    average_precision,
    corloc,
    evaluate_detections,
    false_positives_per_normal_image,
    froc,
    image_auc,
    image_scores,
    sensitivity_specificity,
)
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
    "MASS_CLASSES", "CorLocResult", "corloc", "FROCResult", "froc", "average_precision", "image_scores", "image_auc",
    "sensitivity_specificity", "false_positives_per_normal_image", "evaluate_detections",
    "PairedTestResult", "bootstrap_ci", "bootstrap_means", "mcnemar_exact", "paired_test", "percentile_interval",
    "MethodResult", "add_p_values", "format_ci", "format_p_value", "format_percent", "render_table", "results_table",
    "to_json_methods",
]
