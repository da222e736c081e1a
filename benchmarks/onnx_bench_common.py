"""Shared parts of the ONNX benchmarks: a torchvision-layout ResNet written in torch (torchvision
is not installed), weight copying from a graphdl zoo model, torch's ONNX export, node counts
and a timing helper."""
from __future__ import annotations

import re
import statistics
import time
from collections import Counter
from typing import Callable

import numpy as np

RESNET_LAYERS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3),
                 "resnet152": (3, 8, 36, 3)}


def torch_resnet(name: str, num_classes: int = 1000):
    """A torchvision-compatible bottleneck ResNet (same module names, so same state dict)."""
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(planes * 4)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = downsample

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            return self.relu(out + identity)

    class ResNet(nn.Module):
        def __init__(self, layers):
            super().__init__()
            self.inplanes = 64
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.layer1 = self._make_layer(64, layers[0], 1)
            self.layer2 = self._make_layer(128, layers[1], 2)
            self.layer3 = self._make_layer(256, layers[2], 2)
            self.layer4 = self._make_layer(512, layers[3], 2)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(512 * 4, num_classes)

        def _make_layer(self, planes, blocks, stride):
            downsample = None
            if stride != 1 or self.inplanes != planes * 4:
                downsample = nn.Sequential(
                    nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False),
                    nn.BatchNorm2d(planes * 4))
            layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
            self.inplanes = planes * 4
            layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
            return nn.Sequential(*layers)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    return ResNet(RESNET_LAYERS[name]).eval()


def torch_sgd_step(net, x: np.ndarray, y: np.ndarray, lr: float, momentum: float,
                   device: str = "cpu", autocast: bool = False) -> Callable[[], float]:
    """torch eager's train step on fixed arrays, the peer every training benchmark times:
    zero_grad, forward, cross-entropy, backward, SGD with momentum; returns the loss through
    ``.item()`` (the host waits for it, as graphdl's step returns its loss). ``autocast``:
    the forward in bfloat16 autocast."""
    import contextlib

    import torch

    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    tx, ty = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16) if autocast \
                else contextlib.nullcontext():
            loss = torch.nn.functional.cross_entropy(net(tx), ty)
        loss.backward()
        opt.step()
        return loss.item()
    return step


def copy_weights(gd_model, torch_model) -> int:
    """Copy every graphdl Variable into the torch module's state dict entry of the same name
    (the zoo uses torchvision's names and layouts); returns the number copied."""
    import torch

    state = torch_model.state_dict()
    copied = 0
    for var in gd_model.variables:
        if var.name not in state:
            raise KeyError(f"torch model has no state entry {var.name!r}")
        target = state[var.name]
        value = np.asarray(var.value)
        if tuple(target.shape) != value.shape:
            raise ValueError(f"{var.name}: torch shape {tuple(target.shape)} != graphdl "
                             f"{value.shape}")
        with torch.no_grad():
            target.copy_(torch.from_numpy(value.astype(np.float32)))
        copied += 1
    return copied


def randomize_bn_stats(gd_model, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics, so folding them is really exercised; the last BN
    of each residual branch gets a small scale (as trained ResNets have), which keeps
    ResNet-152's activations in float16 range with random weights."""
    g = np.random.default_rng(seed)
    for var in gd_model.variables:
        if re.fullmatch(r"layer\d+\.\d+\.bn3\.weight", var.name):
            var.value = g.uniform(0.05, 0.15, var.value.shape).astype(var.value.dtype)
        elif var.name.endswith("running_mean"):
            var.value = g.uniform(-0.1, 0.1, var.value.shape).astype(var.value.dtype)
        elif var.name.endswith("running_var"):
            var.value = g.uniform(0.5, 1.5, var.value.shape).astype(var.value.dtype)


def torch_export(torch_model, path: str, example, opset: int = 17) -> str:
    """torch.onnx.export with the TorchScript exporter (works offline; the dynamo exporter
    needs onnxscript), eval mode, constant folding (folds BN into Conv), dynamic batch."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(torch_model, (example,), path, dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}},
                          do_constant_folding=True)
    return path


def node_counts(model) -> dict:
    """Total nodes, nodes without Identity, and the op histogram of an ONNX model."""
    ops = Counter(n.op_type for n in model.graph.node)
    return {"nodes": sum(ops.values()), "nodes_without_identity":
            sum(v for k, v in ops.items() if k != "Identity"),
            "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1]))}


def structure(model) -> list:
    """The model's nodes without names or order: op types, attributes and the shapes of the
    initializers each reads (two exports that ORT runs alike compare equal)."""
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    return sorted(repr((n.op_type, n.domain, sorted((a.name, str(a).replace(a.name, "", 1))
                                                    for a in n.attribute),
                        [shapes.get(i) for i in n.input])) for n in model.graph.node)


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 3,
                     rounds: int = 4, clock: Callable[[], float] = time.perf_counter
                     ) -> dict[str, dict]:
    """Milliseconds per call for each function, measured in ``rounds`` alternating blocks so
    machine noise hits all of them alike. Each block starts with one untimed call: a runtime
    that ran just before keeps its worker threads spinning for a moment (ORT and OpenMP
    both do), which would otherwise be charged to whoever runs next. ``clock``:
    ``time.thread_time`` measures CPU time of single-threaded contenders (robust to load)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    per_block = max(1, -(-repeats // rounds))
    for _ in range(rounds):
        for key, fn in fns.items():
            fn()
            for _ in range(per_block):
                t0 = clock()
                fn()
                samples[key].append((clock() - t0) * 1e3)
    return {k: {"median_ms": statistics.median(v), "mean_ms": statistics.fmean(v),
                "min_ms": min(v), "p90_ms": sorted(v)[int(0.9 * (len(v) - 1))],
                "repeats": len(v)} for k, v in samples.items()}
