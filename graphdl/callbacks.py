"""Training callbacks (Keras-style): the History ``fit`` returns, and early stopping."""
from __future__ import annotations

from typing import Any

import numpy as np


class Callback:
    """Hooks ``fit`` calls; subclass and override the ones you need.

    ``self.model`` is the model being trained and ``self.params`` holds ``epochs``, ``steps``
    (batches per epoch), ``samples`` and ``metrics`` (the log keys each epoch will have).
    Setting ``model.stop_training = True`` ends training after the current epoch.
    """

    model: Any = None
    params: dict = {}

    def set_model(self, model) -> None:
        """Attach the model being trained."""
        self.model = model

    def set_params(self, params: dict) -> None:
        """Receive the run's parameters (epochs, steps, samples, metrics)."""
        self.params = dict(params)

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Called once before the first epoch."""

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        """Called at the start of each epoch (0-based)."""

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        """Called after each committed train step; ``logs`` has the batch ``loss`` and
        ``size``."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Called after each epoch with its metrics (``loss``, ``accuracy``, ``val_*``)."""

    def on_train_end(self, logs: dict | None = None) -> None:
        """Called once after the last epoch."""


class History(Callback):
    """Per-epoch metrics: ``history.history["loss"]``, ``["val_accuracy"]``, ...

    Also ``epoch`` (epoch indices), ``epoch_seconds`` (training time of each epoch, without
    validation) and ``train_seconds`` (their sum).
    """

    def __init__(self):
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []
        self.epoch_seconds: list[float] = []

    @property
    def train_seconds(self) -> float:
        """Total time spent in train steps."""
        return float(sum(self.epoch_seconds))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Record the epoch's metrics."""
        self.epoch.append(epoch)
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(float(v))

    def __repr__(self) -> str:
        last = {k: round(v[-1], 4) for k, v in self.history.items() if v}
        return f"<History {len(self.epoch)} epochs, last {last}>"


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    ``mode`` "auto" maximizes metrics named like accuracy and minimizes the rest (losses).
    ``restore_best_weights`` puts back the weights of the best epoch when training ends.
    The default monitor is "val_loss", as in Keras; the metric must be among the epoch logs
    (``fit`` raises before training if it never will be, e.g. no validation data).
    """

    def __init__(self, monitor: str = "val_loss", min_delta: float = 0.0, patience: int = 0,
                 mode: str = "auto", restore_best_weights: bool = False,
                 baseline: float | None = None):
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"EarlyStopping: mode must be 'auto', 'min' or 'max', got {mode!r}")
        self.monitor = monitor
        self.min_delta = abs(float(min_delta))
        self.patience = int(patience)
        if mode == "auto":
            mode = "max" if "acc" in monitor or monitor.endswith("auc") else "min"
        self.mode = mode
        self.restore_best_weights = bool(restore_best_weights)
        self.baseline = baseline
        self.stopped_epoch: int | None = None
        self.best_epoch: int | None = None
        self.best: float | None = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Reset, and check that the monitored metric will exist."""
        metrics = self.params.get("metrics")
        if metrics is not None and self.monitor not in metrics:
            hint = " (pass validation_data or validation_split to fit)" if \
                self.monitor.startswith("val_") else ""
            raise ValueError(f"EarlyStopping monitors {self.monitor!r}, but the epoch logs will "
                             f"only have {sorted(metrics)}{hint}")
        self.wait = 0
        self.best = self.baseline
        self.best_epoch = None
        self.best_weights = None
        self.stopped_epoch = None

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Track the best value; ask the model to stop once patience runs out."""
        value = (logs or {}).get(self.monitor)
        if value is None or not np.isfinite(value):
            return
        if self._improved(value):
            self.best, self.best_epoch, self.wait = float(value), epoch, 0
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            return
        self.wait += 1
        if self.wait >= self.patience:  # Keras: stop after `patience` epochs without gain
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs: dict | None = None) -> None:
        """Restore the best epoch's weights when asked to."""
        if self.restore_best_weights and self.best_weights is not None:
            self.model.set_weights(self.best_weights)


__all__ = ["Callback", "EarlyStopping", "History"]
