"""graphdl-exported vs torch-exported ResNet-50/152 on the ONNX Runtime CUDA EP, and torch eager.

For each model, dtype (fp32, fp16) and batch (1, 64):
- ``graphdl_ort``: graphdl's export (passes applied; float16 via ``dtype="float16"``) on the
  CUDA EP with I/O binding: the input is copied to the device once per call, the output stays
  on the device; ``*_resident`` variants bind a device input once (compute only);
- ``torch_ort``: the same weights exported by ``torch.onnx.export`` (TorchScript exporter,
  eval mode, constant folding), same runner and options;
- ``torch_eager``: the torch module on the device (cudnn.benchmark on), input already on the
  device; ``torch_eager_h2d`` includes the host-to-device copy.

Targets: graphdl / torch-exported <= 1.00, and graphdl faster than torch eager at batch 1.
``onnxruntime.preload_dlls()`` runs before any CUDA session. The JSON is rewritten after every
measurement (a timeout keeps what was measured) to ``--out``, by default ``$OUT/`` when the
device tool sets it, else ``bench_out/``. ``--cpu`` runs everything on the CPU with a small
input and batch as a dry run.

On the GPU machine (recipe: ../shared/gpu/README.md; after the three calls that carry
``.ortgpu/p0..p2``), one call carrying ``.ortgpu/p3`` and ``.ortgpu/sha256`` runs::

    cp .ortgpu/p3 /tmp/ortparts/ && mkdir -p /tmp/ort && cat /tmp/ortparts/p0 \
      /tmp/ortparts/p1 /tmp/ortparts/p2 /tmp/ortparts/p3 | xz -d -T8 | tar xf - -C /tmp/ort \
      && export PYTHONPATH=/tmp/ort && python3 -m pip install -q --no-deps --no-index \
      --no-build-isolation . && python3 benchmarks/bench_onnx_cuda.py --budget-s 360

with ``timeout_s`` about 540; the JSON lands in ``$OUT/bench_onnx_cuda.json``.
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


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options (defaults: the full GPU run)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_dir = os.environ.get("OUT") or "bench_out"
    p.add_argument("--out", default=os.path.join(default_dir, "bench_onnx_cuda.json"))
    p.add_argument("--cpu", "--dry-run", dest="cpu", action="store_true",
                   help="CPU dry run: small input, batches 1 and 2, few repeats")
    p.add_argument("--models", default="resnet50,resnet152")
    p.add_argument("--batches", default=None, help="comma list (default 1,64; --cpu: 1,2)")
    p.add_argument("--dtypes", default="fp32,fp16")
    p.add_argument("--size", type=int, default=None, help="input size (224; --cpu: 32)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls (default by batch)")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="stop starting new measurements after this many seconds")
    return p.parse_args(argv)


class Report:
    """The JSON result, written atomically after every measurement."""

    def __init__(self, path: str, header: dict):
        self.path = path
        self.data = dict(header, results=[], errors=[])
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)

    def add(self, key: str, row: dict) -> None:
        """Append a row under ``key`` and rewrite the file."""
        self.data[key].append(row)
        self.write()

    def write(self) -> None:
        """Write the JSON (temp file, then rename)."""
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=2)
        os.replace(tmp, self.path)


def export_all(name: str, size: int, tmp: str, dtypes: list[str], device: str) -> dict:
    """Build the graphdl model and its torch twin; write the ONNX files per dtype."""
    import onnx
    import torch

    import graphdl as gd
    from graphdl.backends.onnx_export import convert_float

    shape = (3, size, size)
    model = getattr(gd.models, name)(num_classes=1000, input_shape=shape)
    common.randomize_bn_stats(model)
    net = common.torch_resnet(name)
    common.copy_weights(model, net)
    files, info = {}, {"export_seconds": {}, "node_counts": {}, "notes": []}
    example = torch.zeros((1,) + shape)
    for dtype in dtypes:
        half = dtype == "fp16"
        gd_path = os.path.join(tmp, f"{name}_graphdl_{dtype}.onnx")
        t0 = time.perf_counter()
        gd.export_onnx(model, gd_path, dtype="float16" if half else None)
        info["export_seconds"][f"graphdl_{dtype}"] = time.perf_counter() - t0
        torch_path = os.path.join(tmp, f"{name}_torch_{dtype}.onnx")
        t0 = time.perf_counter()
        if not half:
            common.torch_export(net, torch_path, example)
        else:
            try:  # torch's own half-precision export, traced on the device
                twin = common.torch_resnet(name)
                twin.load_state_dict(net.state_dict())
                twin = twin.to(device).half()
                common.torch_export(twin, torch_path, example.to(device).half())
                del twin
            except Exception as err:  # noqa: BLE001  (fall back to a converted fp32 export)
                info["notes"].append(f"torch fp16 export failed ({type(err).__name__}: "
                                     f"{err}); used torch's fp32 export converted to fp16")
                fp32 = os.path.join(tmp, f"{name}_torch_fp32_for16.onnx")
                common.torch_export(net, fp32, example)
                onnx.save(convert_float(onnx.load(fp32), "float16"), torch_path)
        info["export_seconds"][f"torch_{dtype}"] = time.perf_counter() - t0
        for key, path in ((f"graphdl_{dtype}", gd_path), (f"torch_{dtype}", torch_path)):
            info["node_counts"][key] = common.node_counts(onnx.load(path, load_external_data=False))
        files[dtype] = {"graphdl": gd_path, "torch": torch_path}
    return {"files": files, "torch_net": net, "info": info}


def ort_timers(runner, x: np.ndarray, device: str) -> dict:
    """Two timed calls for one runner: input copied per call, and device-resident input."""
    import onnxruntime as ort

    x = x.astype(runner.input_dtypes[runner.input_names[0]], copy=False)
    session = runner.session
    binding = session.io_binding()
    resident_input = ort.OrtValue.ortvalue_from_numpy(x, device, 0)
    binding.bind_ortvalue_input(runner.input_names[0], resident_input)
    out_meta = session.get_outputs()[0]
    out_type = np.float16 if "float16" in out_meta.type else np.float32
    out_value = ort.OrtValue.ortvalue_from_shape_and_type((x.shape[0], 1000), out_type,
                                                          device, 0)
    binding.bind_ortvalue_output(runner.output_names[0], out_value)

    def per_call():
        runner.run_ortvalues(x)

    def resident():
        session.run_with_iobinding(binding)
    return {"iobinding": per_call, "resident": resident, "output": lambda: out_value.numpy()}


def torch_timers(net, x: np.ndarray, device: str, half: bool):
    """torch eager with the input on the device, and with the host-to-device copy."""
    import torch

    dt = torch.float16 if half else torch.float32
    xd = torch.from_numpy(x).to(device=device, dtype=dt)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def on_device():
        with torch.inference_mode():
            y = net(xd)
        sync()
        return y

    def with_copy():
        with torch.inference_mode():
            y = net(torch.from_numpy(x).to(device=device, dtype=dt))
        sync()
        return y
    return on_device, with_copy


def main(argv=None) -> dict:
    """Run every configuration that fits the time budget; returns the JSON data."""
    args = parse_args(argv)
    start = time.perf_counter()
    import onnxruntime as ort

    device = "cpu" if args.cpu else "cuda"
    if not args.cpu and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # cuDNN/cuBLAS from the nvidia wheels torch brings
    import onnx
    import torch

    from graphdl.backends.ort import OrtRunner, cuda_available

    batches = [int(b) for b in (args.batches or ("1,2" if args.cpu else "1,64")).split(",")]
    size = args.size or (32 if args.cpu else 224)
    dtypes = args.dtypes.split(",")
    header = {
        "benchmark": "bench_onnx_cuda", "mode": "cpu-dry-run" if args.cpu else "cuda",
        "input_size": size, "batches": batches, "dtypes": dtypes,
        "versions": {"onnxruntime": ort.__version__, "onnx": onnx.__version__,
                     "torch": torch.__version__, "python": platform.python_version()},
        "ort_available_providers": ort.get_available_providers(),
    }
    if not args.cpu:
        header["cuda_usable_by_ort"] = cuda_available()
        header["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    report = Report(args.out, header)
    if not args.cpu and not header["cuda_usable_by_ort"]:
        report.add("errors", {"error": "CUDAExecutionProvider is not usable"})
        return report.data
    torch.backends.cudnn.benchmark = True
    providers = "cpu" if args.cpu else "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            if time.perf_counter() - start > args.budget_s:
                report.add("errors", {"skipped": name, "reason": "time budget"})
                continue
            built = export_all(name, size, tmp, dtypes, device)
            report.data.setdefault("models", {})[name] = built["info"]
            net = built["torch_net"]
            for dtype in dtypes:
                half = dtype == "fp16"
                runners = {k: OrtRunner(p, providers=providers, io_binding=True)
                           for k, p in built["files"][dtype].items()}
                report.data["models"][name].setdefault("providers", {})[dtype] = {
                    k: r.providers for k, r in runners.items()}
                eager_net = common.torch_resnet(name)
                eager_net.load_state_dict(net.state_dict())
                eager_net = eager_net.to(device)
                if half:
                    eager_net = eager_net.half()
                for batch in batches:
                    if time.perf_counter() - start > args.budget_s:
                        report.add("errors", {"skipped": f"{name} {dtype} batch {batch}",
                                              "reason": "time budget"})
                        continue
                    measure(report, name, dtype, batch, size, runners, eager_net, device,
                            args.repeats or (3 if args.cpu else (100 if batch == 1 else 30)))
                del runners, eager_net
                if device == "cuda":
                    torch.cuda.empty_cache()
    report.data["wall_seconds"] = time.perf_counter() - start
    report.write()
    return report.data


def measure(report: Report, name: str, dtype: str, batch: int, size: int, runners: dict,
            eager_net, device: str, repeats: int) -> None:
    """Time one (model, dtype, batch) configuration and add its row."""
    half = dtype == "fp16"
    x = np.random.default_rng(batch).standard_normal((batch, 3, size, size)).astype(np.float32)
    if half:
        x = x.astype(np.float16)
    try:
        gd_t = ort_timers(runners["graphdl"], x, device)
        tr_t = ort_timers(runners["torch"], x, device)
        eager, eager_copy = torch_timers(eager_net, x, device, half)
        times = common.time_interleaved({
            "graphdl_ort": gd_t["iobinding"], "torch_ort": tr_t["iobinding"],
            "graphdl_ort_resident": gd_t["resident"], "torch_ort_resident": tr_t["resident"],
            "torch_eager": eager, "torch_eager_h2d": eager_copy,
        }, repeats=repeats, warmup=5)
        ref = eager().float().cpu().numpy()
        diffs = {k: float(np.max(np.abs(t["output"]().astype(np.float32) - ref)))
                 for k, t in (("graphdl_ort", gd_t), ("torch_ort", tr_t))}
    except Exception as err:  # noqa: BLE001  (record and go on to the next configuration)
        report.add("errors", {"config": f"{name} {dtype} batch {batch}",
                              "error": f"{type(err).__name__}: {err}"})
        return
    med = {k: v["median_ms"] for k, v in times.items()}
    row = {"model": name, "dtype": dtype, "batch": batch, "median_ms": med, "times": times,
           "ratio_graphdl_to_torch_ort": med["graphdl_ort"] / med["torch_ort"],
           "ratio_graphdl_to_torch_ort_resident":
               med["graphdl_ort_resident"] / med["torch_ort_resident"],
           "ratio_graphdl_ort_to_torch_eager": med["graphdl_ort"] / med["torch_eager"],
           "max_abs_diff_vs_torch_eager": diffs, "reference_scale": float(np.max(np.abs(
               eager().float().cpu().numpy())))}
    report.add("results", row)
    print(f"{name} {dtype} b{batch}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in med.items()),
          flush=True)


if __name__ == "__main__":
    main()
