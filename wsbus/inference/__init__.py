"""Running a trained detector, one job per module:

* :mod:`.loading`: :func:`load_detector` from a checkpoint, :func:`input_size`, :func:`model_settings`;
* :mod:`.detection`: :func:`detect` over samples (evaluation, self-training, the experiments);
* :mod:`.inputs` and :mod:`.prediction`: :func:`predict` / :func:`iter_predict` over new scans (files, folders,
  arrays, samples) read in DataLoader workers, one :class:`Prediction` per image;
* :mod:`.writer`: :class:`PredictionWriter`, the folder ``wsbus predict`` writes (resumable);
* :mod:`.drawing`: :func:`draw_detections`, the overlays.

Everything here runs the model in eval mode without gradient and restores its train/eval mode afterwards. Every
image is padded to the detector's fixed canvas (:mod:`wsbus.models.transform`), so ``detect``, ``predict`` and the
exported models (:mod:`wsbus.export`) give an image the same detections whatever its batch.
"""
from __future__ import annotations

from .detection import DETECTION_KEYS, detect
from .drawing import draw_detections
from .loading import input_size, load_detector, model_settings
from .prediction import Prediction, iter_predict, predict
from .writer import PredictionWriter

__all__ = ["detect", "load_detector", "DETECTION_KEYS", "predict", "iter_predict", "Prediction",
           "PredictionWriter", "draw_detections", "input_size", "model_settings"]
