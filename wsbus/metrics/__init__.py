"""Implementation of :mod:`wsbus.evaluate`, split by topic.

- :mod:`wsbus.metrics.detection` — CorLoc, AP, image-level AUC, sensitivity/specificity, FPs per normal image;
- :mod:`wsbus.metrics.stats` — bootstrap confidence intervals and paired tests;
- :mod:`wsbus.metrics.tables` — Table II / IV / V-shaped result tables and ``results.json`` entries.

Import the public names from :mod:`wsbus.evaluate`; this package is where they are written.
Taught in ``book/08_evaluation.md``.
"""
