"""Import + optimize of torch-exported models: graphdl's passes vs ORT basic/extended, onnxsim
and onnxslim, in one run.

Models are built from torch.nn modules (no network, no torchvision) and exported by
torch.onnx (TorchScript exporter) with a dynamic batch axis: the real-model test modules,
a ViT-like, a Swin-T-like (shifted window attention) and a GPT-2-like (causal decoder) stack. Per model: nodes other than Constant in the original file
and after each optimizer; graphdl's import + optimize + export time (median); and ONNX
Runtime CPU latency of graphdl's optimized file vs the original, interleaved (median).

Run: ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_import.py``.
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

import graphdl as gd
from graphdl.atomic import write_json
from graphdl.backends.onnx_export import to_onnx
from graphdl.backends.onnx_import import from_onnx

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from tests.test_onnx_real_models import MODELS  # noqa: E402  (the real-model modules)


class ViTLike(nn.Module):
    """Patch embedding, class token, position embedding, pre-norm encoder layers, head."""

    def __init__(self, image=64, patch=8, dim=192, depth=12, heads=3, classes=10):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, stride=patch)
        tokens = (image // patch) ** 2 + 1
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim * 4, dropout=0.0, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, x):
        h = self.patch(x).flatten(2).transpose(1, 2)
        h = torch.cat([self.cls.expand(h.shape[0], -1, -1), h], 1) + self.pos
        return self.head(self.norm(self.encoder(h))[:, 0])


class GPT2Like(nn.Module):
    """Token and position embeddings, causal pre-norm layers (mask precomputed), LM head."""

    def __init__(self, vocab=512, seq=32, dim=128, depth=4, heads=4):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(seq, dim)
        self.register_buffer("idx", torch.arange(seq))
        self.register_buffer("mask", torch.triu(torch.full((seq, seq), float("-inf")), 1))
        layer = nn.TransformerEncoderLayer(dim, heads, dim * 4, dropout=0.0, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab, bias=False)

    def forward(self, ids):
        h = self.tok(ids) + self.pos(self.idx)
        return self.head(self.norm(self.blocks(h, mask=self.mask)))


class _WindowAttention(nn.Module):
    """Swin's window attention: qkv, a learned relative-position bias, an optional shift mask."""

    def __init__(self, dim, heads, window):
        super().__init__()
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.bias_table = nn.Parameter(torch.randn((2 * window - 1) ** 2, heads) * 0.02)
        grid = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window),
                                          indexing="ij")).flatten(1)
        rel = (grid[:, :, None] - grid[:, None, :]).permute(1, 2, 0) + window - 1
        self.register_buffer("rel_index", rel[..., 0] * (2 * window - 1) + rel[..., 1])

    def forward(self, x, mask):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.bias_table[self.rel_index.view(-1)].view(n, n, -1).permute(2, 0, 1)
        attn = attn + bias.unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(b // nw, nw, self.heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.heads, n, n)
        return self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c))


class _SwinBlock(nn.Module):
    """Pre-norm (shifted) window attention and an MLP on a res x res token grid."""

    def __init__(self, dim, heads, res, window, shift):
        super().__init__()
        self.res, self.window, self.shift = res, window, shift
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = _WindowAttention(dim, heads, window)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        mask = None
        if shift:  # Swin's mask: tokens from different regions of the rolled grid don't mix
            region = torch.zeros(res, res)
            cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
            for k, (hs, ws) in enumerate((hs, ws) for hs in cuts for ws in cuts):
                region[hs, ws] = k
            wins = self._windows(region.view(1, res, res, 1)).squeeze(-1)
            mask = (wins[:, None, :] != wins[:, :, None]).float() * -100.0
        self.register_buffer("mask", mask)

    def _windows(self, x):
        b, h, w, c = x.shape
        ws = self.window
        return x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(
            -1, ws * ws, c)

    def forward(self, x):
        b, length, c = x.shape
        r, ws, s = self.res, self.window, self.shift
        h = self.norm1(x).view(b, r, r, c)
        if s:
            h = torch.roll(h, (-s, -s), (1, 2))
        a = self.attn(self._windows(h), self.mask)
        a = a.view(b, r // ws, r // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, r, r, c)
        if s:
            a = torch.roll(a, (s, s), (1, 2))
        x = x + a.reshape(b, length, c)
        return x + self.mlp(self.norm2(x))


class _PatchMerging(nn.Module):
    def __init__(self, dim, res):
        super().__init__()
        self.res, self.norm, self.reduce = res, nn.LayerNorm(4 * dim), nn.Linear(4 * dim, 2 * dim)

    def forward(self, x):
        b, _, c = x.shape
        x = x.view(b, self.res, self.res, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduce(self.norm(x.view(b, -1, 4 * c)))


class SwinLike(nn.Module):
    """Swin-T's layout (depths 2-2-6-2, heads doubling, window 4 with shifted windows every
    other block, patch merging between stages) at a small width and image size."""

    def __init__(self, image=128, patch=4, dim=32, depths=(2, 2, 6, 2), heads=(1, 2, 4, 8),
                 window=4, classes=10):
        super().__init__()
        self.embed, self.embed_norm = nn.Conv2d(3, dim, patch, stride=patch), nn.LayerNorm(dim)
        res, stages = image // patch, []
        for i, (depth, nh) in enumerate(zip(depths, heads)):
            for j in range(depth):
                stages.append(_SwinBlock(dim, nh, res, window, window // 2 if j % 2 else 0))
            if i < len(depths) - 1:
                stages.append(_PatchMerging(dim, res))
                dim, res = dim * 2, res // 2
        self.stages = nn.Sequential(*stages)
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, x):
        h = self.embed_norm(self.embed(x).flatten(2).transpose(1, 2))
        return self.head(self.norm(self.stages(h)).mean(1))


def _extra_models():
    return {
        "vit_like": (ViTLike, lambda: (torch.zeros(2, 3, 64, 64),), ["x"],
                     {"x": {0: "N"}, "y": {0: "N"}},
                     lambda n, t: {"x": np.random.default_rng(n).standard_normal(
                         (n, 3, 64, 64), np.float32)}, (None,)),
        "swin_like": (SwinLike, lambda: (torch.zeros(2, 3, 128, 128),), ["x"],
                      {"x": {0: "N"}, "y": {0: "N"}},
                      lambda n, t: {"x": np.random.default_rng(n).standard_normal(
                          (n, 3, 128, 128), np.float32)}, (None,)),
        "gpt2_like": (GPT2Like, lambda: (torch.zeros(2, 32, dtype=torch.long),), ["ids"],
                      {"ids": {0: "N"}, "y": {0: "N"}},
                      lambda n, t: {"ids": np.random.default_rng(n).integers(0, 512, (n, 32))},
                      (None,)),
    }


def _nodes(model: onnx.ModelProto) -> int:
    return sum(n.op_type != "Constant" for n in model.graph.node)


def _ort_level(model: onnx.ModelProto, level) -> onnx.ModelProto:
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    with tempfile.TemporaryDirectory() as tmp:
        so.optimized_model_filepath = os.path.join(tmp, "opt.onnx")
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return onnx.load(so.optimized_model_filepath)


def _peer(fn):
    start = time.perf_counter()
    try:
        out = fn()
        return {"nodes": _nodes(out), "seconds": round(time.perf_counter() - start, 3)}
    except Exception as err:  # noqa: BLE001  (a peer failing is a result to report)
        return {"error": f"{type(err).__name__}: {str(err)[:200]}"}


def _graphdl(proto):
    graph = from_onnx(proto)
    return to_onnx(gd.optimize(graph).graph)


def _latency(proto, optimized, feeds, rounds: int) -> dict:
    sessions = {name: ort.InferenceSession(m.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
                for name, m in (("original", proto), ("graphdl", optimized))}
    times = {name: [] for name in sessions}
    for _ in range(rounds):  # interleaved
        for name, sess in sessions.items():
            start = time.perf_counter()
            sess.run(None, feeds)
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    a, b = (sessions[k].run(None, feeds)[0] for k in ("original", "graphdl"))
    return {"max_abs_diff_vs_original": float(np.max(np.abs(a - b))),
            "original_ms": round(med["original"], 3), "graphdl_ms": round(med["graphdl"], 3),
            "graphdl_over_original": round(med["graphdl"] / med["original"], 3)}


def bench_model(name, spec, repeats: int, rounds: int) -> dict:
    """Every number for one model."""
    make, args, names, dynamic, feeds, lengths = spec
    torch.manual_seed(0)
    torch.backends.mha.set_fastpath_enabled(False)
    f = io.BytesIO()
    torch.onnx.export(make().eval(), args(), f, dynamo=False, input_names=names,
                      output_names=["y"], dynamic_axes=dynamic, opset_version=17)
    proto = onnx.load_from_string(f.getvalue())
    row = {"original_nodes": _nodes(proto)}
    times, optimized = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        try:
            optimized = _graphdl(proto)
        except Exception as err:  # noqa: BLE001
            row["graphdl"] = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
            break
        times.append(time.perf_counter() - start)
    if optimized is not None:
        row["graphdl"] = {"nodes": _nodes(optimized),
                          "import_optimize_export_s": round(statistics.median(times), 3)}
    row["ort_basic"] = _peer(lambda: _ort_level(proto, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC))
    row["ort_extended"] = _peer(lambda: _ort_level(
        proto, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED))

    def onnxsim_run():
        import onnxsim
        return onnxsim.simplify(proto)[0]

    def onnxslim_run():
        import onnxslim
        return onnxslim.slim(proto)

    row["onnxsim"] = _peer(onnxsim_run)
    row["onnxslim"] = _peer(onnxslim_run)
    if optimized is not None:
        row["ort_cpu_latency"] = _latency(proto, optimized, feeds(4, lengths[0] or 5), rounds)
        peers = [row[k]["nodes"] for k in ("ort_basic", "ort_extended", "onnxsim", "onnxslim")
                 if "nodes" in row[k]]
        row["graphdl_at_or_below_best_peer"] = row["graphdl"]["nodes"] <= min(peers)
    return row


def main(argv=None) -> dict:
    """Run every model; write and return the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/bench_import.json")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--models", nargs="*")
    args = p.parse_args(argv)
    ort.set_default_logger_severity(3)
    specs = dict(MODELS, **_extra_models())
    chosen = args.models or list(specs)
    results = {"python": platform.python_version(), "onnxruntime": ort.__version__,
               "torch": torch.__version__, "graphdl": gd.__version__, "models": {}}
    for name in chosen:
        results["models"][name] = row = bench_model(name, specs[name], args.repeats,
                                                    args.rounds)
        g = row["graphdl"]
        print(f"{name:34s} original {row['original_nodes']:5d}  graphdl "
              f"{g.get('nodes', 'ERR')!s:>5}  ort basic {row['ort_basic'].get('nodes')}  "
              f"extended {row['ort_extended'].get('nodes')}  onnxsim "
              f"{row['onnxsim'].get('nodes')}  onnxslim {row['onnxslim'].get('nodes')}  "
              f"import+opt {g.get('import_optimize_export_s')} s")
    results["not_at_or_below_best_peer"] = sorted(
        name for name, row in results["models"].items()
        if not row.get("graphdl_at_or_below_best_peer", False))
    print("graphdl not at or below the best peer on:",
          ", ".join(results["not_at_or_below_best_peer"]) or "none")
    write_json(args.out, results)
    return results


if __name__ == "__main__":
    main()
