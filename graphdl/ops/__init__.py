"""The op library: importing this package registers every op family in ``REGISTRY``."""
from graphdl.ops import elementwise, linalg, reduce, shape, source  # noqa: F401  (registration)
from graphdl.ops import conv, indexing, loss, norm, pool  # noqa: F401  (registration)
from graphdl.ops import einsum, indexing_extra, logical, math_extra, resize, scan_ops  # noqa: F401  (registration)
from graphdl.ops import collective  # noqa: F401  (registration: MPI collectives)
from graphdl.ops import fused  # noqa: F401  (registration: kernels the fusion passes build)
from graphdl.ops import dynamic  # noqa: F401  (registration: run-time shapes, NonZero)
from graphdl.ops import extra2  # noqa: F401  (registration: Range)
from graphdl.ops import recurrent  # noqa: F401  (registration: RNN/GRU/LSTM loops)
from graphdl.ops import runtime_args, runtime_resize  # noqa: F401  (registration: run-time axes/pads/starts/scales)
from graphdl.ops import data_dependent  # noqa: F401  (registration: Unique, NonMaxSuppression)
from graphdl.ops import counter_rng  # noqa: F401  (registration: CounterUniform)
from graphdl.ops import col2im, grid_sample, linalg_extra  # noqa: F401  (registration: GridSample, Det, Col2Im)
from graphdl.ops.registry import (REGISTRY, LoweringError, OnnxLowering, OnnxNode, OpDef,
                                  UnsupportedOpError, apply, constant, get_op, register)

__all__ = ["REGISTRY", "LoweringError", "OnnxLowering", "OnnxNode", "OpDef",
           "UnsupportedOpError", "apply", "constant", "get_op", "register"]
