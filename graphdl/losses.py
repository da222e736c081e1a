"""Loss functions, and the ``Loss`` objects ``Model.compile(loss=...)`` looks up by name.

Each loss builds graph nodes from the model's outputs and the targets, and reduces to a scalar
mean. Classification losses take logits, as torch's do. Keras users who end their model with a
softmax (or sigmoid) and pass ``"sparse_categorical_crossentropy"`` still get the stable form:
when the output node is a Softmax (Sigmoid), the loss reads its input logits instead, which is
what Keras itself does for ``from_logits=False``.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from graphdl import tensor as F
from graphdl.ir import TensorType, Value
from graphdl.passes.rewrite import any_value, match_value, op

# log(p) is clamped at -100, as torch's binary_cross_entropy does, so p = 0 gives a finite loss
_LOG_FLOOR = math.exp(-100.0)


def cross_entropy(logits: Value, labels: Any, reduction: str = "mean") -> Value:
    """Softmax cross-entropy of ``logits`` (N, C) against integer class ``labels`` (N,)."""
    return F.softmax_cross_entropy(_logits_of(logits, "Softmax"), labels, reduction)


def categorical_cross_entropy(logits: Value, targets: Any) -> Value:
    """Softmax cross-entropy against one-hot or soft ``targets`` (N, C): mean of
    ``-sum(t * log_softmax(z))`` over rows."""
    logits = _logits_of(logits, "Softmax")
    return F.mean(-F.sum(targets * F.log_softmax(logits, -1), -1))


def binary_cross_entropy_with_logits(logits: Value, targets: Any) -> Value:
    """Mean binary cross-entropy from logits, stable: ``softplus(z) - z * t``."""
    # -t log sigmoid(z) - (1 - t) log(1 - sigmoid(z)) = log(1 + e^z) - t z
    return F.mean(F.softplus(logits) - logits * targets)


_SIGMOID = op("Sigmoid", any_value("logits"))  # sigmoid(logits)


def binary_cross_entropy(probs: Value, targets: Any, from_logits: bool = False) -> Value:
    """Mean binary cross-entropy of probabilities ``probs`` in [0, 1] (torch's BCELoss, with
    log clamped at -100); ``from_logits=True`` takes logits (the stable form)."""
    if from_logits:
        return binary_cross_entropy_with_logits(probs, targets)
    of_logits = match_value(_SIGMOID, probs, {})
    if of_logits is not None:  # the stable form on the logits, as Keras does
        return binary_cross_entropy_with_logits(of_logits["logits"], targets)
    log_p = F.log(F.clip(probs, min=_LOG_FLOOR))
    log_q = F.log(F.clip(1.0 - probs, min=_LOG_FLOOR))
    return F.mean(-(targets * log_p + (1.0 - targets) * log_q))


def mse(predictions: Value, targets: Any) -> Value:
    """Mean squared error."""
    return F.mean(F.square(predictions - targets))


def mae(predictions: Value, targets: Any) -> Value:
    """Mean absolute error."""
    return F.mean(F.abs(predictions - targets))


def _logits_of(outputs: Value, squash_op: str) -> Value:
    """The logits behind ``outputs``: the input of a final Softmax/Sigmoid, else ``outputs``."""
    if isinstance(outputs, Value) and outputs.node.op == squash_op:
        node = outputs.node
        if squash_op != "Softmax" or node.attrs["axis"] in (-1, outputs.ndim - 1):
            return node.inputs[0]
    return outputs


class Loss:
    """A loss for ``Model.compile``: builds the loss node and says what targets it takes.

    ``target_type(outputs)`` is the type of the ``y`` input of the train-step graph;
    ``check_targets(y, outputs)`` validates and converts user targets before training.
    ``accuracy(outputs, y)`` gives per-sample correctness for the "accuracy" metric, or is
    None when accuracy means nothing for this loss (regression).
    """

    def __init__(self, name: str, fn: Callable[[Value, Value], Value], targets: str):
        self.name = name
        self.fn = fn
        self.targets = targets  # "labels", "probs" (same shape, float), "values"

    def __call__(self, outputs: Value, targets: Value) -> Value:
        """The scalar loss node."""
        return self.fn(outputs, targets)

    def __repr__(self) -> str:
        return f"Loss({self.name!r})"

    def target_type(self, outputs: Value) -> TensorType:
        """The type of the targets this loss compares ``outputs`` with."""
        if self.targets == "labels":
            return TensorType((outputs.shape[0],), "int64")
        return TensorType(tuple(outputs.shape), outputs.dtype)

    def check_targets(self, y: Any, outputs: Value) -> np.ndarray:
        """``y`` as an array of :meth:`target_type`, raising a clear error for bad targets."""
        y = np.asarray(y)
        want = self.target_type(outputs)
        if self.targets == "labels":
            return _check_labels(y, outputs, self.name)
        if y.dtype.kind not in "biuf":
            raise ValueError(f"loss {self.name!r}: targets must be numbers, got dtype {y.dtype}")
        if y.dtype.kind == "f" and y.size and not np.isfinite(y).all():
            first = int(np.flatnonzero(~np.isfinite(y.reshape(len(y), -1)).all(1))[0]) \
                if y.ndim else 0
            raise ValueError(f"loss {self.name!r}: targets contain NaN or Inf (first at sample "
                             f"{first}); the loss and metrics would be NaN")
        expected = want.shape[1:]
        if y.ndim == len(want.shape) - 1 and expected and expected[-1] == 1:
            y = y[..., None]  # (N,) targets for an (N, 1) output, as Keras accepts
        if tuple(y.shape[1:]) != tuple(expected):
            raise ValueError(f"loss {self.name!r}: targets have shape {y.shape}, the model "
                             f"output is {_fmt(outputs.shape)}; each target must be "
                             f"{_fmt(expected)}")
        if self.targets == "probs" and y.size and (y.min() < 0 or y.max() > 1):
            raise ValueError(f"loss {self.name!r}: targets must lie in [0, 1], got values in "
                             f"[{y.min()}, {y.max()}]")
        return y.astype(want.dtype, copy=False)

    def accuracy(self, outputs: np.ndarray, y: np.ndarray) -> np.ndarray | None:
        """Per-sample correctness (1.0 or 0.0), or None when accuracy does not apply."""
        if self.targets == "labels":
            return (outputs.argmax(axis=-1) == y).astype(np.float64)
        if self.name == "categorical_cross_entropy":
            return (outputs.argmax(axis=-1) == y.argmax(axis=-1)).astype(np.float64)
        if self.targets == "probs":
            threshold = 0.0 if self.name == "binary_cross_entropy_with_logits" else 0.5
            hit = (outputs > threshold) == (y > 0.5)
            return hit.reshape(len(hit), -1).mean(axis=1)
        return None


def _check_labels(y: np.ndarray, outputs: Value, loss_name: str) -> np.ndarray:
    classes = outputs.shape[-1] if outputs.ndim == 2 else None
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        hint = (" (they look one-hot; pass y.argmax(1), or use "
                "loss='categorical_crossentropy')" if y.ndim == 2 and y.shape[1] == classes
                else "")
        raise ValueError(f"loss {loss_name!r} takes integer class labels of shape (N,), got "
                         f"shape {y.shape}{hint}")
    if y.dtype.kind == "f":
        if y.size and not np.all(np.isfinite(y) & (y == np.round(y))):
            bad = np.flatnonzero(~(np.isfinite(y) & (y == np.round(y))))
            raise ValueError(f"loss {loss_name!r} takes integer class labels; got "
                             f"non-integer float labels (y[{bad[0]}] = {y[bad[0]].item()!r}, "
                             f"{len(bad)} bad label(s))")
    elif y.dtype.kind not in "iub":
        raise ValueError(f"loss {loss_name!r} takes integer class labels, got dtype {y.dtype}")
    if isinstance(classes, int) and y.size and (y.min() < 0 or y.max() >= classes):
        # checked before the int64 cast, which would wrap labels such as 1e20
        bad = np.flatnonzero((y < 0) | (y >= classes))
        shown = y[bad[0]].item()
        raise ValueError(f"labels out of range: the model has {classes} classes, so labels must "
                         f"lie in [0, {classes - 1}]; y[{bad[0]}] = {shown!r} "
                         f"({len(bad)} bad label(s))")
    if y.dtype.kind == "f" and y.size and np.abs(y).max() >= 2.0 ** 63:
        raise ValueError(f"loss {loss_name!r}: label {np.abs(y).max()!r} does not fit int64")
    return y.astype(np.int64)


def _fmt(shape) -> str:
    dims = ", ".join("None" if isinstance(d, str) else str(d) for d in shape)
    return f"({dims}{',' if len(shape) == 1 else ''})"


_CE = Loss("cross_entropy", cross_entropy, "labels")
_CCE = Loss("categorical_cross_entropy", categorical_cross_entropy, "probs")
_BCE = Loss("binary_cross_entropy", binary_cross_entropy, "probs")
_BCE_LOGITS = Loss("binary_cross_entropy_with_logits", binary_cross_entropy_with_logits, "probs")
_MSE = Loss("mse", mse, "values")
_MAE = Loss("mae", mae, "values")

# Names users write (torch and Keras spellings) -> the loss. Read-only lookup table.
LOSSES: dict[str, Loss] = {
    "cross_entropy": _CE, "softmax_cross_entropy": _CE,
    "sparse_categorical_crossentropy": _CE, "sparse_categorical_cross_entropy": _CE,
    "categorical_crossentropy": _CCE, "categorical_cross_entropy": _CCE,
    "binary_cross_entropy": _BCE, "binary_crossentropy": _BCE, "bce": _BCE,
    "binary_cross_entropy_with_logits": _BCE_LOGITS, "bce_with_logits": _BCE_LOGITS,
    "mse": _MSE, "mean_squared_error": _MSE,
    "mae": _MAE, "mean_absolute_error": _MAE,
}


def get(name_or_fn: str | Loss | Callable) -> Loss:
    """The :class:`Loss` for a name (``"cross_entropy"``, ``"mse"``, ...), a Loss, or a
    function ``fn(outputs, targets) -> scalar Value`` (targets then match the outputs)."""
    if isinstance(name_or_fn, Loss):
        return name_or_fn
    if isinstance(name_or_fn, str):
        key = name_or_fn.lower()
        if key not in LOSSES:
            raise ValueError(f"unknown loss {name_or_fn!r}; known losses: "
                             f"{', '.join(sorted(LOSSES))}")
        return LOSSES[key]
    if callable(name_or_fn):
        found = next((loss for loss in LOSSES.values() if loss.fn is name_or_fn), None)
        if found is not None:
            return found
        return Loss(getattr(name_or_fn, "__name__", "custom_loss"), name_or_fn, "values")
    raise TypeError(f"loss must be a name, a graphdl.losses.Loss or a function, got "
                    f"{type(name_or_fn).__name__}")


__all__ = ["LOSSES", "Loss", "binary_cross_entropy", "binary_cross_entropy_with_logits",
           "categorical_cross_entropy", "cross_entropy", "get", "mae", "mse"]
