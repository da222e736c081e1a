"""Keras-style layers: ``from graphdl import layers as L``.

Each layer is a callable ``Value -> Value`` that creates its Variables on the first call and
names them ``f"{layer.name}.{param}"`` with torch's parameter names, so weights copy 1:1 to the
equivalent torch module (Dense weight is (out, in), Conv2D weight is OIHW). See
:mod:`graphdl.layers.base` for naming and seeding, :mod:`graphdl.layers.initializers` for the
initializers.
"""
from graphdl.layers import initializers
from graphdl.layers.activations import (ACTIVATIONS, GELU, Activation, LeakyReLU, LogSoftmax,
                                        ReLU, ReLU6, Sigmoid, Softmax, Softplus, Tanh)
from graphdl.layers.base import Layer, derive_seed, name_output, name_scope, unique_name
from graphdl.layers.conv import (AdaptiveAvgPool2D, AvgPool2D, Conv2D, DepthwiseConv2D,
                                 GlobalAvgPool2D, MaxPool2D)
from graphdl.layers.core import Add, Concatenate, Dense, Dropout, Embedding, Flatten, Identity, \
    Reshape
from graphdl.layers.norm import BatchNorm1D, BatchNorm2D, LayerNorm

__all__ = ["ACTIVATIONS", "GELU", "Activation", "Add", "AdaptiveAvgPool2D", "AvgPool2D",
           "BatchNorm1D", "BatchNorm2D", "Concatenate", "Conv2D", "Dense", "DepthwiseConv2D",
           "Dropout", "Embedding", "Flatten", "GlobalAvgPool2D", "Identity", "Layer",
           "LayerNorm", "LeakyReLU", "LogSoftmax", "MaxPool2D", "ReLU", "ReLU6", "Reshape",
           "Sigmoid", "Softmax", "Softplus", "Tanh", "derive_seed", "initializers",
           "name_output", "name_scope", "unique_name"]
