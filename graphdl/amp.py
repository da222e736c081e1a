"""Dynamic loss scaling for mixed-precision train steps, inside the graph.

The loss is multiplied by ``scale`` (a float32 state Variable) before ``grad``; the gradients
are divided by it again. If any gradient holds an Inf or NaN (a float16 overflow), the step
is skipped *in the graph*: every update keeps the variable's old value (parameters, moments,
the optimizer's step counter, BatchNorm statistics), the scale halves and the count of good
steps resets. After ``growth_interval`` good steps in a row the scale doubles. This is torch's
``GradScaler`` rule, with no Python between steps.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from graphdl import tensor as F
from graphdl.ir import Value, Variable


class LossScaler:
    """The loss-scale state (``amp.loss_scale``, ``amp.good_steps``, ``amp.skipped``) and
    the graph pieces that use it."""

    def __init__(self, init_scale: float = 2.0 ** 15, growth_interval: int = 2000,
                 factor: float = 2.0, name: str = "amp"):
        self.growth_interval = int(growth_interval)
        self.factor = float(factor)
        self.scale = Variable(f"{name}.loss_scale", np.array(init_scale, np.float32), False)
        self.good_steps = Variable(f"{name}.good_steps", np.array(0, np.int64), False)
        self.skipped = Variable(f"{name}.skipped", np.array(0, np.int64), False)

    @property
    def variables(self) -> list[Variable]:
        """The scaler's state Variables."""
        return [self.scale, self.good_steps, self.skipped]

    def scaled(self, loss: Value) -> tuple[Value, Value]:
        """(loss * scale, the scale value read once for this step)."""
        scale = F.variable_value(self.scale)
        return loss * F.cast(scale, loss.dtype), scale

    def unscale(self, grads: Sequence[Value], scale: Value) -> list[Value]:
        """Each gradient divided by the scale (in its own dtype)."""
        return [g / F.cast(scale, g.dtype) for g in grads]

    def guard(self, updates: Sequence[tuple[Variable, Value]], grads: Sequence[Value],
              scale: Value) -> list[tuple[Variable, Value]]:
        """The updates, each kept only when every gradient is finite; plus the scale's own."""
        sums = [F.cast(F.sum(g), "float32") for g in grads]
        total = sums[0]
        for s in sums[1:]:
            total = total + s
        # |sum| < inf is False for an Inf or a NaN anywhere in any gradient
        finite = F.less(F.abs(total), F.const(np.inf, "float32"))
        out = [(var, F.where(finite, new, F.variable_value(var))) for var, new in updates]
        good = F.variable_value(self.good_steps)
        grown = F.equal(good + 1, F.const(self.growth_interval, "int64"))
        next_scale = F.where(finite, F.where(grown, scale * self.factor, scale),
                             scale * (1.0 / self.factor))
        next_good = F.where(finite, F.where(grown, F.const(0, "int64"), good + 1),
                            F.const(0, "int64"))
        skipped = F.variable_value(self.skipped)
        next_skipped = F.where(finite, skipped, skipped + 1)
        return out + [(self.scale, next_scale), (self.good_steps, next_good),
                      (self.skipped, next_skipped)]
