"""graphdl-exported vs torch-exported ResNet-50 on ONNX Runtime (CPU), in one run.

Both models hold the same weights (graphdl's zoo ResNet-50, copied into a torchvision-layout
torch module written in benchmarks/onnx_bench_common.py). graphdl exports through its passes
(``gd.export_onnx``: BatchNorm folded, fusions); torch through ``torch.onnx.export`` (the
TorchScript exporter, eval mode, constant folding). Both run on the CPU execution provider
with ORT_ENABLE_ALL at batch 1, timed interleaved. Also reported: node counts before ORT's
optimizer (and after it), export times, torch eager, and agreement of the outputs.

Run: ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_onnx_cpu.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import onnx_bench_common as common  # noqa: E402

import graphdl as gd  # noqa: E402
from graphdl.backends.onnx_export import to_onnx  # noqa: E402
from graphdl.backends.ort import OrtRunner  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench_out/bench_onnx_cpu.json")
    p.add_argument("--model", default="resnet50", choices=sorted(common.RESNET_LAYERS))
    p.add_argument("--size", type=int, default=224, help="input height and width")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=96)
    p.add_argument("--rounds", type=int, default=24, help="alternating timing blocks")
    p.add_argument("--threads", type=int, default=None, help="ORT intra-op threads")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    """Run the benchmark and write its JSON."""
    import onnx
    import onnxruntime as ort
    import torch

    args = parse_args(argv)
    shape = (3, args.size, args.size)
    model = getattr(gd.models, args.model)(num_classes=1000, input_shape=shape)
    common.randomize_bn_stats(model)
    net = common.torch_resnet(args.model)
    common.copy_weights(model, net)
    x = np.random.default_rng(0).standard_normal((args.batch,) + shape).astype(np.float32)

    with tempfile.TemporaryDirectory() as tmp:
        gd_path, torch_path = os.path.join(tmp, "graphdl.onnx"), os.path.join(tmp, "torch.onnx")
        t0 = time.perf_counter()
        gd.export_onnx(model, gd_path)
        gd_export_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        common.torch_export(net, torch_path, torch.from_numpy(x))
        torch_export_s = time.perf_counter() - t0
        raw = common.node_counts(to_onnx(model.graph(training=False)))
        counts = {"graphdl_unoptimized": raw,
                  "graphdl": common.node_counts(onnx.load(gd_path)),
                  "torch": common.node_counts(onnx.load(torch_path))}
        runners, after_ort, shapes = {}, {}, {}
        for key, path in (("graphdl", gd_path), ("torch", torch_path)):
            opt_path = os.path.join(tmp, f"{key}.ort_optimized.onnx")
            runners[key] = OrtRunner(path, providers="cpu", threads=args.threads,
                                     optimization_level="all", optimized_model_path=opt_path)
            optimized = onnx.load(opt_path)
            after_ort[key] = common.node_counts(optimized)
            shapes[key] = common.structure(optimized)
        outputs = {k: r(x) for k, r in runners.items()}
        with torch.inference_mode():
            eager = net(torch.from_numpy(x)).numpy()
            times = common.time_interleaved({
                "graphdl_ort": lambda: runners["graphdl"](x),
                "torch_ort": lambda: runners["torch"](x),
                "torch_eager": lambda: net(torch.from_numpy(x)),
            }, repeats=args.repeats, rounds=args.rounds)
    ratio = times["graphdl_ort"]["median_ms"] / times["torch_ort"]["median_ms"]
    result = {
        "benchmark": "bench_onnx_cpu", "model": args.model, "input_shape": list(shape),
        "batch": args.batch, "provider": "CPUExecutionProvider",
        "optimization_level": "ORT_ENABLE_ALL", "threads": args.threads or "default",
        "times": times,
        "ratio_graphdl_to_torch_ort": ratio, "target_ratio": 1.0, "meets_target": ratio <= 1.0,
        "ratio_graphdl_ort_to_torch_eager":
            times["graphdl_ort"]["median_ms"] / times["torch_eager"]["median_ms"],
        "node_counts_before_ort": {k: v["nodes"] for k, v in counts.items()},
        "node_counts_before_ort_without_identity":
            {k: v["nodes_without_identity"] for k, v in counts.items()},
        "node_counts_after_ort_all": {k: v["nodes"] for k, v in after_ort.items()},
        "same_graph_after_ort_all": shapes["graphdl"] == shapes["torch"],
        "op_histograms": {**counts, **{f"{k}_after_ort": v for k, v in after_ort.items()}},
        "export_seconds": {"graphdl": gd_export_s, "torch": torch_export_s},
        "max_abs_diff": {
            "graphdl_ort_vs_torch_eager": float(np.max(np.abs(outputs["graphdl"] - eager))),
            "torch_ort_vs_torch_eager": float(np.max(np.abs(outputs["torch"] - eager)))},
        "versions": {"onnxruntime": ort.__version__, "onnx": onnx.__version__,
                     "torch": torch.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "cpu_count": os.cpu_count(),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp_out = args.out + ".tmp"
    with open(tmp_out, "w") as f:
        json.dump(result, f, indent=2)
    os.replace(tmp_out, args.out)
    print(json.dumps({k: result[k] for k in ("ratio_graphdl_to_torch_ort",
                                             "node_counts_before_ort",
                                             "node_counts_after_ort_all",
                                             "same_graph_after_ort_all")}, indent=2))
    print("times (median ms):", {k: round(v["median_ms"], 2) for k, v in times.items()})
    return result


if __name__ == "__main__":
    main()
