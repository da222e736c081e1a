"""graphdl: a deep learning framework built as a graph compiler.

Declare a static graph (raw ops or layers), let visible passes optimize it, and run it on the
NumPy executor (with symbolic gradients) or export it to ONNX Runtime.
"""
from graphdl import ops  # noqa: F401  (registers every op)
from graphdl.autodiff import grad
from graphdl.compiled_function import Function, function
from graphdl.ir import Graph, GraphError, ShapeError, TensorType, Value, Variable
from graphdl.tensor import *  # noqa: F401,F403  (the functional op API)
from graphdl.tensor import const, input, param, variable_of
from graphdl.version import __version__
from graphdl import layers, losses, models, optim  # noqa: I001  (after the op API they use)
from graphdl.compiler import compile, export_onnx
from graphdl.model import Model, Sequential, import_onnx
from graphdl.modes import set_training, state_updates
from graphdl.optimization import optimize
from graphdl.backends.import_budget import ImportBudget
