"""Optimizers (SGD, Adam, AdamW) and learning-rate schedules, as graph builders.

An optimizer builds the update nodes of a train step: ``opt.updates(params, grads)`` returns
``(Variable, new value)`` pairs for the parameters, the optimizer's state (moments, momentum
buffers) and its step counter. Every piece of state is a named Variable, e.g.
``"fc.weight.adam_m"`` or ``"adam.step"``, so the whole step is one pure graph that a compiled
function runs per batch and that exports to ONNX with the state as inputs and outputs.

The learning rate is computed inside the graph from the step counter, so a schedule needs no
Python between steps. The update rules follow ``torch.optim`` exactly (same formulas, same
defaults), which the torch-parity tests check.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from graphdl import tensor as F
from graphdl.ir import FLOAT_DTYPES, PARAM, GraphError, Value, Variable

# ---- learning-rate schedules ---------------------------------------------------------------


class Schedule:
    """A learning rate as a function of the optimizer step (0 for the first step).

    ``schedule(step)`` builds the float64 scalar rate from the int64 step value in the graph;
    ``schedule.at(step)`` computes the same rate in Python (for logs and tests).
    """

    def __call__(self, step: Value) -> Value:
        raise NotImplementedError

    def at(self, step: int) -> float:
        """The learning rate at ``step`` (0-based), computed in Python."""
        raise NotImplementedError


class ConstantLR(Schedule):
    """A fixed learning rate."""

    def __init__(self, lr: float):
        self.lr = _positive("lr", lr, allow_zero=True)

    def __call__(self, step: Value) -> Value:
        return F.const(self.lr, "float64")

    def at(self, step: int) -> float:
        """The learning rate (the same at every step)."""
        return self.lr

    def __repr__(self) -> str:
        return f"ConstantLR({self.lr})"


class StepLR(Schedule):
    """``lr * gamma ** floor(step / step_size)``: decay by ``gamma`` every ``step_size`` steps
    (torch's StepLR stepped once per optimizer step)."""

    def __init__(self, lr: float, step_size: int, gamma: float = 0.1):
        self.lr = _positive("lr", lr)
        if int(step_size) < 1:
            raise ValueError(f"StepLR: step_size must be >= 1, got {step_size}")
        self.step_size = int(step_size)
        self.gamma = float(gamma)

    def __call__(self, step: Value) -> Value:
        t = F.cast(step, "float64")
        exponent = F.floor(t / float(self.step_size))
        return F.pow(F.const(self.gamma, "float64"), exponent) * self.lr

    def at(self, step: int) -> float:
        """The learning rate at ``step``."""
        return self.lr * self.gamma ** (step // self.step_size)

    def __repr__(self) -> str:
        return f"StepLR({self.lr}, step_size={self.step_size}, gamma={self.gamma})"


class ExponentialLR(Schedule):
    """``lr * gamma ** step`` (torch's ExponentialLR stepped once per optimizer step)."""

    def __init__(self, lr: float, gamma: float):
        self.lr = _positive("lr", lr)
        self.gamma = float(gamma)

    def __call__(self, step: Value) -> Value:
        return F.pow(F.const(self.gamma, "float64"), F.cast(step, "float64")) * self.lr

    def at(self, step: int) -> float:
        """The learning rate at ``step``."""
        return self.lr * self.gamma ** step

    def __repr__(self) -> str:
        return f"ExponentialLR({self.lr}, gamma={self.gamma})"


class CosineLR(Schedule):
    """Cosine decay from ``lr`` to ``eta_min`` over ``t_max`` steps, then flat at ``eta_min``:
    ``eta_min + (lr - eta_min) * (1 + cos(pi * min(step, t_max) / t_max)) / 2``.

    Equal to torch's CosineAnnealingLR for steps up to ``t_max`` (torch's would rise again
    after; this one stays at ``eta_min``, as Keras' CosineDecay does).
    """

    def __init__(self, lr: float, t_max: int, eta_min: float = 0.0):
        self.lr = _positive("lr", lr)
        if int(t_max) < 1:
            raise ValueError(f"CosineLR: t_max must be >= 1, got {t_max}")
        self.t_max = int(t_max)
        self.eta_min = float(eta_min)

    def __call__(self, step: Value) -> Value:
        t = F.minimum(F.cast(step, "float64"), F.const(float(self.t_max), "float64"))
        cosine = F.cos(t * (math.pi / self.t_max))
        return (cosine + 1.0) * (0.5 * (self.lr - self.eta_min)) + self.eta_min

    def at(self, step: int) -> float:
        """The learning rate at ``step``."""
        cosine = math.cos(math.pi * min(step, self.t_max) / self.t_max)
        return self.eta_min + (self.lr - self.eta_min) * (1 + cosine) / 2

    def __repr__(self) -> str:
        return f"CosineLR({self.lr}, t_max={self.t_max}, eta_min={self.eta_min})"


def cosine_decay(lr: float, decay_steps: int, alpha: float = 0.0) -> CosineLR:
    """Keras' CosineDecay: from ``lr`` down to ``alpha * lr`` over ``decay_steps`` steps."""
    return CosineLR(lr, decay_steps, eta_min=alpha * lr)


def as_schedule(lr: float | Schedule) -> Schedule:
    """A schedule for ``lr``: schedules pass through, numbers become :class:`ConstantLR`."""
    if isinstance(lr, Schedule):
        return lr
    if isinstance(lr, (int, float, np.floating, np.integer)):
        return ConstantLR(float(lr))
    raise TypeError(f"lr must be a number or a graphdl.optim schedule, got {type(lr).__name__}")


def _positive(name: str, value: float, allow_zero: bool = False) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a positive number, got {value}")
    return value


# ---- optimizers ----------------------------------------------------------------------------


class _Step:
    """Per-build scalars shared by every parameter update, cast once per dtype."""

    def __init__(self, step: Value, lr: Value):
        self.step = step  # int64 count of steps taken before this one
        self.lr64 = lr
        self._cache: dict[tuple[str, str], Value] = {}

    def cast(self, key: str, value_fn, dtype: str) -> Value:
        """``value_fn()`` (a float64 scalar) cast to ``dtype``, built once per key and dtype."""
        if (key, dtype) not in self._cache:
            v = value_fn()
            self._cache[key, dtype] = v if dtype == "float64" else F.cast(v, dtype)
        return self._cache[key, dtype]

    def lr(self, dtype: str) -> Value:
        """The learning rate in ``dtype``."""
        return self.cast("lr", lambda: self.lr64, dtype)

    def count(self) -> Value:
        """The 1-based number of this step, as float64 (torch's ``state['step']``)."""
        return self.cast("t", lambda: F.cast(self.step + 1, "float64"), "float64")


class Optimizer:
    """Base class: state bookkeeping and the ``updates`` builder; subclasses define the rule.

    ``weight_decay`` is an L2 term added to the gradient (torch's ``weight_decay``);
    ``clip_norm`` rescales all gradients so their global L2 norm is at most ``clip_norm``
    (torch's ``clip_grad_norm_``). State Variables are created on the first ``updates`` call
    and reused by later ones, so rebuilding a train step keeps the moments.
    """

    slot_names: tuple[str, ...] = ()

    def __init__(self, lr: float | Schedule, weight_decay: float = 0.0,
                 clip_norm: float | None = None, name: str | None = None):
        self.lr = as_schedule(lr)
        self.weight_decay = _positive("weight_decay", weight_decay, allow_zero=True)
        self.clip_norm = None if clip_norm is None else _positive("clip_norm", clip_norm)
        self.name = name or type(self).__name__.lower()
        self.step_variable = Variable(f"{self.name}.step", np.zeros((), np.int64),
                                      trainable=False)
        self._slots: dict[int, tuple[Variable, dict[str, Variable]]] = {}

    @property
    def iterations(self) -> int:
        """How many update steps have run."""
        return int(self.step_variable.value)

    def learning_rate(self, step: int | None = None) -> float:
        """The learning rate at ``step`` (default: the next step)."""
        return self.lr.at(self.iterations if step is None else step)

    @property
    def variables(self) -> list[Variable]:
        """The optimizer's state: the step counter, then each parameter's slots."""
        out = [self.step_variable]
        for _, slots in self._slots.values():
            out.extend(slots.values())
        return out

    def slot(self, var: Variable, slot_name: str) -> Variable:
        """The state Variable ``slot_name`` of parameter ``var`` (zeros, made on first use)."""
        entry = self._slots.setdefault(id(var), (var, {}))
        slots = entry[1]
        if slot_name not in slots:
            slots[slot_name] = Variable(f"{var.name}.{slot_name}", np.zeros_like(var.value),
                                        trainable=False)
        return slots[slot_name]

    def updates(self, params: Sequence[Value], grads: Sequence[Value | None],
                ) -> list[tuple[Variable, Value]]:
        """(Variable, new value) pairs for one step: parameters, optimizer state, step count.

        ``params`` are parameter values (``gd.param`` / layer weights) and ``grads`` their
        gradients (e.g. from ``gd.grad``); a ``None`` gradient leaves its parameter unchanged.
        """
        params, grads = list(params), list(grads)
        if len(params) != len(grads):
            raise GraphError(f"{type(self).__name__}.updates: {len(params)} parameters but "
                             f"{len(grads)} gradients")
        pairs_in = []
        for p, g in zip(params, grads):
            var = _param_variable(p)
            if g is None:
                continue
            if g.type != p.type:
                raise GraphError(f"{type(self).__name__}.updates: gradient of {var.name!r} has "
                                 f"type {g.type}, the parameter is {p.type}")
            if p.dtype not in FLOAT_DTYPES:
                raise GraphError(f"cannot optimize {var.name!r}: dtype {p.dtype} is not float")
            pairs_in.append((var, p, g))
        step = F.variable_value(self.step_variable)
        ctx = _Step(step, self.lr(step))
        if self.clip_norm is not None:
            pairs_in = self._clip(pairs_in, ctx)
        out: list[tuple[Variable, Value]] = []
        for var, p, g in pairs_in:
            if self.weight_decay and self._l2_in_gradient:
                g = g + p * self.weight_decay  # L2: d/dp (wd/2 |p|^2) = wd p
            out.extend(self._apply(var, p, g, ctx))
        out.append((self.step_variable, step + 1))
        return out

    _l2_in_gradient = True

    def _clip(self, items, ctx: _Step):
        squares = [F.cast(F.sum(F.square(g)), "float64") if g.dtype != "float64"
                   else F.sum(F.square(g)) for _, _, g in items]
        total = squares[0]
        for s in squares[1:]:
            total = total + s
        # torch: coef = max_norm / (norm + 1e-6), clamped to at most 1
        coef = F.minimum(self.clip_norm / (F.sqrt(total) + 1e-6), F.const(1.0, "float64"))
        return [(var, p, g * ctx.cast("clip", lambda: coef, g.dtype)) for var, p, g in items]

    def _apply(self, var: Variable, p: Value, g: Value, ctx: _Step,
               ) -> list[tuple[Variable, Value]]:
        raise NotImplementedError

    def _state(self, var: Variable, slot_name: str) -> tuple[Variable, Value]:
        slot = self.slot(var, slot_name)
        return slot, F.variable_value(slot)


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, dampening and Nesterov momentum
    (torch.optim.SGD's rule: ``buf = m buf + (1 - dampening) g`` with ``buf = g`` on the first
    step; Nesterov uses ``g + m buf``)."""

    def __init__(self, lr: float | Schedule = 1e-3, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0, dampening: float = 0.0,
                 clip_norm: float | None = None, name: str | None = None):
        super().__init__(lr, weight_decay, clip_norm, name)
        self.momentum = float(momentum)
        self.dampening = float(dampening)
        self.nesterov = bool(nesterov)
        if not 0.0 <= self.momentum < 1.0 + 1e-12:
            raise ValueError(f"SGD: momentum must lie in [0, 1], got {momentum}")
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("SGD: Nesterov momentum requires a momentum > 0 and zero dampening")

    def _apply(self, var, p, g, ctx):
        lr = ctx.lr(p.dtype)
        pairs = []
        if self.momentum:
            slot, buf = self._state(var, "momentum")
            new_buf = buf * self.momentum + (g * (1.0 - self.dampening) if self.dampening else g)
            if self.dampening:  # torch starts the buffer at g itself, undampened
                first = F.equal(ctx.step, F.const(0, "int64"))
                new_buf = F.where(first, g, new_buf)
            pairs.append((slot, new_buf))
            g = g + new_buf * self.momentum if self.nesterov else new_buf
        return [(var, p - lr * g)] + pairs

    def __repr__(self) -> str:
        return (f"SGD(lr={self.lr!r}, momentum={self.momentum}, nesterov={self.nesterov}, "
                f"weight_decay={self.weight_decay})")


class Adam(Optimizer):
    """Adam (torch.optim.Adam's rule, bias-corrected moments; ``weight_decay`` is an L2 term
    added to the gradient; ``amsgrad`` keeps the running maximum of the second moment)."""

    def __init__(self, lr: float | Schedule = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False,
                 clip_norm: float | None = None, name: str | None = None):
        super().__init__(lr, weight_decay, clip_norm, name)
        b1, b2 = (float(b) for b in betas)
        for label, b in (("betas[0]", b1), ("betas[1]", b2)):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"{type(self).__name__}: {label} must lie in [0, 1), got {b}")
        self.betas = (b1, b2)
        self.eps = _positive("eps", eps, allow_zero=True)
        self.amsgrad = bool(amsgrad)

    def _apply(self, var, p, g, ctx):
        b1, b2 = self.betas
        dt = p.dtype
        m_slot, m = self._state(var, "adam_m")
        v_slot, v = self._state(var, "adam_v")
        new_m = m * b1 + g * (1.0 - b1)
        new_v = v * b2 + g * g * (1.0 - b2)
        pairs = [(m_slot, new_m), (v_slot, new_v)]
        second = new_v
        if self.amsgrad:
            vmax_slot, vmax = self._state(var, "adam_vmax")
            second = F.maximum(vmax, new_v)
            pairs.append((vmax_slot, second))
        t = ctx.count()
        # torch: step_size = lr / (1 - b1^t); denom = sqrt(v) / sqrt(1 - b2^t) + eps
        step_size = ctx.cast("adam_step_size", lambda: ctx.lr64 / (
            1.0 - F.pow(F.const(b1, "float64"), t)), dt)
        bc2_sqrt = ctx.cast("adam_bc2_sqrt", lambda: F.sqrt(
            1.0 - F.pow(F.const(b2, "float64"), t)), dt)
        denom = F.sqrt(second) / bc2_sqrt + self.eps
        base = p if self._l2_in_gradient or not self.weight_decay else \
            p * (1.0 - ctx.lr(dt) * self.weight_decay)
        return [(var, base - step_size * (new_m / denom))] + pairs

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(lr={self.lr!r}, betas={self.betas}, eps={self.eps}, "
                f"weight_decay={self.weight_decay})")


class AdamW(Adam):
    """Adam with decoupled weight decay (torch.optim.AdamW: ``p *= 1 - lr * wd`` before the
    Adam step; default ``weight_decay=0.01``)."""

    _l2_in_gradient = False

    def __init__(self, lr: float | Schedule = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01, amsgrad: bool = False,
                 clip_norm: float | None = None, name: str | None = None):
        super().__init__(lr, betas, eps, weight_decay, amsgrad, clip_norm, name)


def _param_variable(p: Value) -> Variable:
    if not isinstance(p, Value) or p.node.op != PARAM:
        raise GraphError(f"optimizers update parameters (gd.param values or layer weights); "
                         f"got {p!r}")
    return p.node.attrs["variable"]


def get(name_or_optimizer: str | Optimizer, **kwargs) -> Optimizer:
    """An optimizer from a name ("sgd", "adam", "adamw") with ``kwargs``, or the optimizer."""
    if isinstance(name_or_optimizer, Optimizer):
        return name_or_optimizer
    table = {"sgd": SGD, "adam": Adam, "adamw": AdamW}
    if isinstance(name_or_optimizer, str) and name_or_optimizer.lower() in table:
        return table[name_or_optimizer.lower()](**kwargs)
    raise ValueError(f"unknown optimizer {name_or_optimizer!r}; use one of {sorted(table)} or "
                     "a graphdl.optim optimizer")


__all__ = ["SGD", "Adam", "AdamW", "ConstantLR", "CosineLR", "ExponentialLR", "Optimizer",
           "Schedule", "StepLR", "as_schedule", "cosine_decay", "get"]
