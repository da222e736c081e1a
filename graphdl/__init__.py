"""graphdl: a deep learning framework built as a graph compiler.

Declare a static graph (raw ops or layers), let visible passes optimize it, and run it on the
NumPy executor (with symbolic gradients) or export it to ONNX Runtime.
"""
from graphdl import ops  # noqa: F401  (registers every op)
from graphdl.autodiff import grad
from graphdl.function import Function, function
from graphdl.ir import Graph, GraphError, ShapeError, TensorType, Value, Variable
from graphdl.tensor import *  # noqa: F401,F403  (the functional op API)
from graphdl.tensor import const, input, param, variable_of

__version__ = "0.1.0"
from graphdl import layers, losses, models, optim  # noqa: E402
from graphdl.compile import compile, export_onnx  # noqa: E402
from graphdl.model import Model, Sequential  # noqa: E402
from graphdl.modes import set_training, state_updates  # noqa: E402
from graphdl.optimize import optimize  # noqa: E402
from graphdl.backends.import_budget import ImportBudget  # noqa: E402
