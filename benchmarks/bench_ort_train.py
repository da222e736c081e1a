"""Benchmark: train steps on ONNX Runtime (state on the device) vs the NumPy executor and torch.

CPU mode (default), one run, contenders interleaved in alternating blocks, medians:
- ``cnn`` (3x32x32, batch 64), ``resnet18`` (64x64, batch 16), ``resnet50`` (224x224, batch 8),
  one SGD-momentum step each (forward, cross-entropy, backward, update, BatchNorm statistics);
- ``graphdl_ort``: ``model.compile(..., backend="onnxruntime", providers="cpu")``'s train step
  (``OrtFunction``: state bound in device buffers, commit-by-swap, only the batch in and
  the scalars out), optimized by the ``onnxruntime_cpu`` pipeline (passes/ort_forms.py:
  conv gradients and small-map convs as im2col GEMMs, training BatchNorm and its gradient
  through ORT's fused BatchNormalization kernel); ``graphdl_ort_unlowered``: the same
  step through the executor's ``training`` pipeline only (the form before that lowering;
  ``--skip-unlowered`` drops it); ``graphdl_ort_inplace``: the ORT step with
  ``inplace_update=True`` (state written over the old buffers, the NaN guard in the graph;
  ``--skip-inplace`` drops it); ``graphdl_numpy``: the NumPy executor; ``torch``: torch
  eager, the same architecture, the same thread count;
- per model, ``lowering``: how often each ort_forms rule fired;
- per model: ms per step, ratios to torch, first-step losses, and the host<->device bytes
  per step measured by the runner's counters (batch in, outputs out, state moved);
- the ORT per-op profile (``SessionOptions.enable_profiling``) of the slowest model (or
  ``--profile-model``), with its kernel time summed by class (GEMM and convolution, data
  movement, normalization, pooling, the rest), and torch's per-op profile of the same step
  by the same classes.

CUDA mode (``--cuda``): ResNet-50 at batch 64 on the ORT CUDA provider in fp32 and with
``precision="mixed"``, against torch eager fp32 and bf16 autocast in the same run; JSON goes
to ``$OUT/bench_ort_train_cuda.json``. ``--cuda --dry-run`` runs the same code on the CPU
with a small input to check its logic. On the GPU machine (recipe: ../shared/gpu/README.md;
after the three calls that carry ``.ortgpu/p0..p2``), one call carrying ``.ortgpu/p3`` and
``.ortgpu/sha256`` with ``timeout_s`` about 540 runs::

    cp .ortgpu/p3 /tmp/ortparts/ && mkdir -p /tmp/ort && cat /tmp/ortparts/p0 \
      /tmp/ortparts/p1 /tmp/ortparts/p2 /tmp/ortparts/p3 | xz -d -T8 | tar xf - -C /tmp/ort \
      && export PYTHONPATH=/tmp/ort && python3 -m pip install -q --no-deps --no-index \
      --no-build-isolation . && python3 benchmarks/bench_ort_train.py --cuda

Run on CPU with ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python
benchmarks/bench_ort_train.py`` (``--quick`` for smaller repeats; about 2-3 min on a quiet
2-core machine). On a loaded machine wall-clock ratios say little (torch's OpenMP threads
suffer most from oversubscription); ``--cpu-time`` runs every contender on one thread and
times each step by the calling thread's CPU time instead (the NumPy executor is left out:
its BLAS threads would not be counted).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from onnx_bench_common import time_interleaved, torch_sgd_step  # noqa: E402

CPU_MODELS = {  # name: (input shape, batch)
    "cnn": ((3, 32, 32), 64),
    "resnet18": ((3, 64, 64), 16),
    "resnet50": ((3, 224, 224), 8),
}
LR, MOMENTUM = 0.01, 0.9


def build_model(name: str, shape, dtype="float32"):
    """The graphdl zoo model (10 classes for cnn, 1000 for the ResNets)."""
    import graphdl as gd

    if name == "cnn":
        return gd.models.cnn(num_classes=10, input_shape=shape, seed=0)
    return getattr(gd.models, name)(num_classes=1000, input_shape=shape, seed=0)


def torch_model(name: str, gd_model):
    """The same architecture in torch (weights copied where the names match)."""
    if name == "cnn":
        from bench_cnn_train import torch_twin

        return torch_twin(gd_model)
    from onnx_bench_common import copy_weights, torch_resnet

    if name == "resnet18":
        net = torch_resnet18()
    else:
        net = torch_resnet(name)
    copy_weights(gd_model, net)
    return net


def torch_resnet18(num_classes: int = 1000):
    """A torchvision-compatible basic-block ResNet-18 (same state-dict names)."""
    from torch import nn

    class Basic(nn.Module):
        def __init__(self, cin, planes, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = None
            if stride != 1 or cin != planes:
                self.downsample = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False),
                                                nn.BatchNorm2d(planes))

        def forward(self, x):
            idt = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(out)) + idt)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            cin, layers = 64, []
            for i, planes in enumerate((64, 128, 256, 512)):
                stride = 1 if i == 0 else 2
                layers.append(nn.Sequential(Basic(cin, planes, stride), Basic(planes, planes, 1)))
                cin = planes
            self.layer1, self.layer2, self.layer3, self.layer4 = layers
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(512, num_classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(self.avgpool(x).flatten(1))

    return Net()


def graphdl_step(model, backend: str, threads: int, providers: str = "cpu",
                 precision: str = "float32", profile: bool = False,
                 pipeline: str | None = None, inplace: bool = False):
    """The compiled train step of ``model`` on ``backend`` (an OrtFunction or a Function);
    ``pipeline`` overrides the pass pipeline an ORT step gets by default; ``inplace`` writes
    the state updates in place (``inplace_update=True``)."""
    import graphdl as gd

    model.compile(gd.optim.SGD(LR, momentum=MOMENTUM), "cross_entropy", backend=backend,
                  providers=providers, threads=threads, precision=precision,
                  **({"inplace_update": True} if inplace else {}))
    if profile or pipeline is not None:
        from graphdl.backends.ort_train import OrtFunction, pipeline_for
        from graphdl.passes import optimize_graph

        g = model.train_step_graph(model.loss, model.optimizer, precision=precision)
        graph, report = optimize_graph(g, training=True,
                                       passes=pipeline or pipeline_for(providers))
        return OrtFunction(graph, providers=providers, threads=threads, profile=profile,
                           report=report, inplace_update=inplace, check_outputs=(0,))
    return model._train_function()


def lowering_counts(report) -> dict:
    """How often each rule of the ORT CPU lowering fired (from the pass report)."""
    counts: Counter = Counter()
    for row in getattr(report, "rows", ()):
        if row.name == "lower_for_ort_cpu":
            counts.update(row.rules)
    return dict(counts)


def run_step(step):
    """A callable doing one committed step on (x, y) staged once (device-resident batch)."""
    def call(staged):
        outs, pending = step.run_staged(staged) if hasattr(step, "run_staged") else \
            step.run_uncommitted(*staged)
        step.commit(pending)
        return float(outs[0])
    return call


# kernel classes for the profile summaries: ORT op types, and substrings of torch's aten ops
KERNEL_CLASSES = {
    "gemm_and_conv": ("Conv", "ConvTranspose", "MatMul", "FusedMatMul", "Gemm", "FusedGemm",
                      "convolution", "aten::mm", "aten::addmm"),
    "data_movement": ("Transpose", "Slice", "Concat", "Pad", "Reshape", "Unsqueeze", "Squeeze",
                      "ReorderInput", "ReorderOutput", "Gather", "aten::copy_", "aten::cat"),
    "normalization": ("BatchNormalization", "batch_norm"),
    "pooling": ("MaxPool", "ScatterElements", "GlobalAveragePool", "max_pool", "avg_pool",
                "adaptive_avg_pool"),
}


def kernel_class(op: str) -> str:
    """The KERNEL_CLASSES entry an ORT op type or a torch aten op belongs to (else
    "elementwise_and_other": the optimizer update, activations, reductions, casts)."""
    for name, members in KERNEL_CLASSES.items():
        if op in members or any(m in op for m in members if m.islower() or ":" in m):
            return name
    return "elementwise_and_other"


def by_class(ms_by_op: dict) -> dict:
    """ms per step summed by kernel_class."""
    out: Counter = Counter()
    for op, ms in ms_by_op.items():
        out[kernel_class(op)] += ms
    return dict(out.most_common())


def torch_profile(step_fn, steps: int = 3) -> dict:
    """torch's per-op self CPU ms per step (torch.profiler) and their sum by kernel class,
    to set against the ORT profile of the same model."""
    from torch.profiler import ProfilerActivity, profile

    step_fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        for _ in range(steps):
            step_fn()
        wall = (time.perf_counter() - started) * 1e3 / steps
    ms = Counter({e.key: e.self_cpu_time_total / 1e3 / steps for e in prof.key_averages()})
    return {"steps": steps, "wall_ms_per_step": wall, "self_cpu_ms_per_step": sum(ms.values()),
            "by_class": by_class(ms), "by_op": dict(ms.most_common(15)),
            "note": "each op's time on the calling thread (its OpenMP workers run inside "
                    "it), as ORT's kernel times are each kernel's wall time"}


def ort_profile(step, x, y, steps: int = 3) -> dict:
    """Per-op ms per step from ORT's profiler trace (kernel time, summed by op type), over
    ``steps`` steps after one warm-up step whose events are dropped (a fresh session's first
    run allocates its buffers and faults their pages in: it inflated big-output kernels such
    as weight transposes up to 10x)."""
    staged = step.stage(x, y)
    call = run_step(step)
    for _ in range(steps + 1):
        call(staged)
    path = step.end_profiling()
    with open(path) as f:
        events = json.load(f)
    os.remove(path)
    runs = sorted((e["ts"], e["ts"] + e.get("dur", 0)) for e in events
                  if e.get("cat") == "Session" and e.get("name") == "model_run")
    warm_from = runs[0][1] if len(runs) > steps else float("-inf")
    spent, calls, by_node, shapes = Counter(), Counter(), Counter(), {}
    for e in events:
        if (e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")
                and e.get("ts", 0) >= warm_from):
            args = e.get("args", {})
            op = args.get("op_name", "?")
            spent[op] += e.get("dur", 0)
            calls[op] += 1
            node = e["name"][:-len("_kernel_time")]
            by_node[node] += e.get("dur", 0)
            shapes[node] = (op, [list(t.values())[0] for t in args.get("input_type_shape", [])])
    total = sum(spent.values())
    return {"steps": steps, "kernel_ms_per_step": total / 1e3 / steps,
            "by_class": by_class({op: us / 1e3 / steps for op, us in spent.items()}),
            "by_op": {op: {"ms": us / 1e3 / steps, "share": us / total,
                           "calls": calls[op] // steps}
                      for op, us in spent.most_common()},
            "top_nodes": [{"node": n, "op": shapes[n][0], "input_shapes": shapes[n][1],
                           "ms": us / 1e3 / steps, "share": us / total}
                          for n, us in by_node.most_common(15)]}


def bench_cpu(args) -> dict:
    """CPU mode: every model, three contenders, interleaved."""
    import torch

    if args.cpu_time:
        args.threads, args.skip_numpy = 1, True
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.cpu_time else time.perf_counter
    results = {}
    for name in args.models:
        shape, batch = CPU_MODELS[name]
        if args.quick and name != "cnn":
            batch = max(2, batch // 2)
        r = np.random.default_rng(0)
        x = r.normal(size=(batch, *shape)).astype(np.float32)
        classes = 10 if name == "cnn" else 1000
        y = r.integers(0, classes, batch)
        m_ort, m_np = build_model(name, shape), build_model(name, shape)
        torch_step = torch_sgd_step(torch_model(name, m_ort), x, y, LR, MOMENTUM)
        t0 = time.perf_counter()
        ort_step = graphdl_step(m_ort, "onnxruntime", args.threads)
        compile_s = time.perf_counter() - t0
        np_step = None if args.skip_numpy else graphdl_step(m_np, "numpy", args.threads)
        staged_ort = ort_step.stage(x, y)
        call_ort = run_step(ort_step)
        call_np = run_step(np_step) if np_step is not None else None
        if not args.skip_unlowered:
            base_step = graphdl_step(build_model(name, shape), "onnxruntime", args.threads,
                                     pipeline="training")
            staged_base, call_base = base_step.stage(x, y), run_step(base_step)
        if not args.skip_inplace:
            inplace_step = graphdl_step(build_model(name, shape), "onnxruntime", args.threads,
                                        inplace=True)
            staged_inplace, call_inplace = inplace_step.stage(x, y), run_step(inplace_step)

        first = {"graphdl_ort": call_ort(staged_ort), "torch": torch_step()}
        if call_np is not None:
            first["graphdl_numpy"] = call_np([x, y])
        fns = {"graphdl_ort": lambda: call_ort(staged_ort), "torch": torch_step}
        if not args.skip_unlowered:
            first["graphdl_ort_unlowered"] = call_base(staged_base)
            fns["graphdl_ort_unlowered"] = lambda: call_base(staged_base)
        if not args.skip_numpy:
            fns["graphdl_numpy"] = lambda: call_np([x, y])
        if not args.skip_inplace:
            first["graphdl_ort_inplace"] = call_inplace(staged_inplace)
            fns["graphdl_ort_inplace"] = lambda: call_inplace(staged_inplace)
        before = (ort_step.bytes_in, ort_step.bytes_out, ort_step.runs,
                  ort_step.state.bytes_to_device, ort_step.state.bytes_to_host)
        reps = args.repeats if name == "cnn" else max(2, args.repeats // 3)
        timing = time_interleaved(fns, repeats=reps, warmup=1, rounds=2 if args.quick else 3,
                                  clock=clock)
        runs = ort_step.runs - before[2]
        traffic = {"batch_in_bytes_per_step": (ort_step.bytes_in - before[0]) / runs,
                   "outputs_out_bytes_per_step": (ort_step.bytes_out - before[1]) / runs,
                   "state_to_device_bytes_per_step":
                       (ort_step.state.bytes_to_device - before[3]) / runs,
                   "state_to_host_bytes_per_step":
                       (ort_step.state.bytes_to_host - before[4]) / runs,
                   "state_bytes": int(sum(v.value.nbytes for v in ort_step.variables)),
                   # the DeviceState's buffers: double buffers hold each updated one twice
                   "state_bytes_resident": ort_step.state.bytes_resident,
                   "note": "on CPU the batch is bound without a copy (the provider reads host "
                           "memory); on CUDA these bytes cross PCIe"}
        ref = timing["torch"]["median_ms"]
        results[name] = {
            "input": list(shape), "batch": batch, "params": m_ort.num_params(),
            "compile_seconds_ort": compile_s, "ms": timing,
            "ratio_to_torch": {k: v["median_ms"] / ref for k, v in timing.items()},
            "first_step_loss": first, "traffic": traffic,
            "lowering": lowering_counts(ort_step.report),
            "providers": ort_step.providers}
        print(f"{name}: " + ", ".join(f"{k} {v['median_ms']:.1f} ms" for k, v in
                                      timing.items()), flush=True)
        if not args.skip_inplace:
            traffic["state_bytes_resident_inplace"] = inplace_step.state.bytes_resident
            del inplace_step
        del np_step, m_np
        if not args.skip_unlowered:
            del base_step
    slowest = args.profile_model or max(
        results, key=lambda k: results[k]["ms"]["graphdl_ort"]["median_ms"])
    shape, batch = CPU_MODELS[slowest]
    if args.quick and slowest != "cnn":
        batch = max(2, batch // 2)
    r = np.random.default_rng(0)
    x = r.normal(size=(batch, *shape)).astype(np.float32)
    y = r.integers(0, 10 if slowest == "cnn" else 1000, batch)
    prof = graphdl_step(build_model(slowest, shape), "onnxruntime", args.threads, profile=True)
    out = {"models": results, "ort_profile": {"model": slowest, **ort_profile(prof, x, y)}}
    torch_step = torch_sgd_step(torch_model(slowest, build_model(slowest, shape)), x, y, LR,
                                MOMENTUM)
    out["torch_profile"] = {"model": slowest, **torch_profile(torch_step)}
    if not args.skip_inplace:
        prof = graphdl_step(build_model(slowest, shape), "onnxruntime", args.threads,
                            profile=True, inplace=True)
        out["ort_profile_inplace"] = {"model": slowest, **ort_profile(prof, x, y)}
    if not args.skip_unlowered:  # the same step before the ORT CPU lowering, for comparison
        prof = graphdl_step(build_model(slowest, shape), "onnxruntime", args.threads,
                            profile=True, pipeline="training")
        out["ort_profile_unlowered"] = {"model": slowest, **ort_profile(prof, x, y)}
    return out


def bench_cuda(args) -> dict:
    """CUDA mode: ResNet-50 fp32 and mixed on ORT CUDA vs torch eager fp32 and bf16."""
    import onnxruntime as ort
    import torch

    if hasattr(ort, "preload_dlls") and not args.dry_run:
        ort.preload_dlls()

    dry = args.dry_run
    device = "cpu" if dry else "cuda"
    providers = "cpu" if dry else "cuda"
    shape, batch = ((3, 64, 64), 2) if dry else ((3, 224, 224), 64)
    r = np.random.default_rng(0)
    x = r.normal(size=(batch, *shape)).astype(np.float32)
    y = r.integers(0, 1000, batch)
    steps = {}
    for precision in ("float32", "mixed"):
        model = build_model("resnet50", shape)
        steps[precision] = graphdl_step(model, "onnxruntime", None, providers, precision)
    net = torch_model("resnet50", build_model("resnet50", shape)).to(device)
    if not dry:
        torch.backends.cudnn.benchmark = True
    fns = {}
    for precision, step in steps.items():
        staged = step.stage(x, y)
        call = run_step(step)
        fns[f"graphdl_ort_{precision}"] = (lambda c=call, s=staged: c(s))
    # (each with its own optimizer over the same weights)
    fns["torch_eager_fp32"] = torch_sgd_step(net, x, y, LR, MOMENTUM, device)
    fns["torch_eager_bf16_autocast"] = torch_sgd_step(net, x, y, LR, MOMENTUM, device,
                                                      autocast=True)
    timing = time_interleaved(fns, repeats=args.repeats, warmup=2, rounds=3)
    ref = timing["torch_eager_fp32"]["median_ms"]
    return {"model": "resnet50", "input": list(shape), "batch": batch, "dry_run": dry,
            "providers": {k: s.providers for k, s in steps.items()}, "ms": timing,
            "ratio_to_torch_fp32": {k: v["median_ms"] / ref for k, v in timing.items()},
            "targets": {"graphdl_ort_float32": 1.0, "graphdl_ort_mixed": 0.8}}


def main(argv=None) -> dict:
    """Parse options, run the chosen mode, write the JSON atomically."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--models", nargs="+", default=list(CPU_MODELS), choices=CPU_MODELS)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller batches")
    parser.add_argument("--skip-numpy", action="store_true",
                        help="time only ORT and torch (the NumPy executor is slow on ResNets)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="one thread each, timed by thread CPU time (for loaded machines)")
    parser.add_argument("--skip-unlowered", action="store_true",
                        help="do not time the ORT step without the ORT CPU lowering")
    parser.add_argument("--skip-inplace", action="store_true",
                        help="do not time the ORT step with inplace_update=True")
    parser.add_argument("--profile-model", choices=CPU_MODELS, default=None,
                        help="profile this model (ORT and torch per-op; default: the slowest)")
    parser.add_argument("--cuda", action="store_true", help="the H200 mode (see docstring)")
    parser.add_argument("--dry-run", action="store_true", help="--cuda logic on the CPU")
    args = parser.parse_args(argv)
    import onnxruntime as ort
    import torch

    started = time.time()
    data = bench_cuda(args) if args.cuda else bench_cpu(args)
    data.update({"benchmark": "ort_train_step", "mode": "cuda" if args.cuda else "cpu",
                 "clock": "thread_time" if args.cpu_time else "perf_counter",
                 "seconds": time.time() - started, "threads": args.threads,
                 "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                             "onnxruntime": ort.__version__, "torch": torch.__version__,
                             "numpy": np.__version__, "load_average": os.getloadavg()[0],
                             "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")}})
    name = "bench_ort_train_cuda.json" if args.cuda else "bench_ort_train.json"
    out = args.out or os.path.join(os.environ.get("OUT") or "bench_out", name)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".tmp", "w") as f:
        json.dump(data, f, indent=2)
    os.replace(out + ".tmp", out)
    print(f"wrote {out}")
    return data


if __name__ == "__main__":
    main()
