"""The model zoo: ``gd.models.mlp``, ``cnn``, ``resnet18/34/50/101/152``, ``googlenet`` and
``mobilenet_v2``. Each takes ``num_classes`` and ``input_shape`` and returns a ``gd.Model``.

The large models follow torchvision's layouts, parameter names and initializations, so their
parameter counts match torchvision exactly and their state dicts copy 1:1. Initial weights are
deterministic: every layer's seed derives from the ``seed`` argument and the layer's name.
"""
from graphdl.models.googlenet import googlenet
from graphdl.models.mlp_cnn import cnn, mlp
from graphdl.models.mobilenet import mobilenet_v2
from graphdl.models.resnet import resnet, resnet18, resnet34, resnet50, resnet101, resnet152

__all__ = ["cnn", "googlenet", "mlp", "mobilenet_v2", "resnet", "resnet18", "resnet34",
           "resnet50", "resnet101", "resnet152"]
