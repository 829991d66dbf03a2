"""The training engine: the :class:`Trainer` loop and its ``run_step``, hooks, stateless data streams, and the
state a checkpoint holds.

Taught in ``book/06_joint_training.md``.
"""
from .config import TrainerConfig
from .history import LOG_COLUMNS, History
from .hooks import CallbackHook, CSVLogger, Hook, PeriodicCheckpointer, ProgressBar, TensorBoardLogger
from .ema import EMATeacher
from .streams import MIXINGS, MODES, STREAMS, StreamBatchSampler, step_batches, stream_batch, stream_positions
from .trainer import NonFiniteLossError, Trainer

__all__ = ["Trainer", "TrainerConfig", "NonFiniteLossError", "History", "LOG_COLUMNS", "Hook", "CSVLogger",
           "TensorBoardLogger", "ProgressBar", "PeriodicCheckpointer", "CallbackHook", "EMATeacher", "MODES", "MIXINGS", "STREAMS",
           "StreamBatchSampler", "step_batches", "stream_batch", "stream_positions"]
