"""The ``graphdl`` command line: ``demo``, ``info``, ``optimize`` and ``bench``.

Subcommands that need ONNX or ONNX Runtime import them when they run, so ``graphdl --help``
stays fast and a missing optional part only affects its own command.

A refusal is one line on stderr (``graphdl CMD: error: ...``), never a traceback. Exit
statuses (see :data:`EXIT_CODES`):

- 0: success;
- 1: the demo ran but one of its checks failed;
- 2: usage error (bad arguments, a missing input file, missing optional dependencies);
- 3: the input was refused: not a readable ONNX model, an invalid header, external data that
  breaks the path policy, an op graphdl cannot import, an import budget exceeded;
- 4: the output could not be written (unwritable folder, disk full, an export error);
- 130: interrupted.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from graphdl.backends.import_budget import ImportBudget
from graphdl.demo import DEFAULT_BATCH_SIZE, DEFAULT_EPOCHS, run_demo
from graphdl.ir import GraphError
from graphdl.launch import run_ranks
from graphdl.optimization import cli_optimize
from graphdl.version import __version__

EXIT_CODES = {"ok": 0, "check_failed": 1, "usage": 2, "refused_input": 3, "write_failed": 4,
              "interrupted": 130}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="graphdl", description="graphdl: a deep learning framework built as a graph "
        "compiler (typed IR, symbolic gradients, optimization passes, NumPy and ONNX Runtime "
        "backends).")
    parser.add_argument("--version", action="version", version=f"graphdl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="train the small CNN on the real 8x8 digits and report",
                          description="Train gd.models.cnn on scikit-learn's 8x8 digits (fixed "
                          "20% hold-out), print test accuracy and training time, save the "
                          "weights, a training-curve PNG and the model summary.")
    demo.add_argument("--epochs", type=_positive, default=DEFAULT_EPOCHS,
                      help=f"training epochs (default {DEFAULT_EPOCHS})")
    demo.add_argument("--batch-size", type=_positive, default=DEFAULT_BATCH_SIZE,
                      help=f"mini-batch size (default {DEFAULT_BATCH_SIZE})")
    demo.add_argument("--out", default="graphdl_demo_out",
                      help="output folder (default ./graphdl_demo_out)")
    demo.add_argument("--seed", type=int, default=0,
                      help="seed for the initial weights and the shuffling (default 0)")
    demo.add_argument("--threads", type=int, default=1,
                      help="BLAS threads while training (default 1: the digits model's "
                      "matrices are too small to gain from more; 0 leaves BLAS alone)")
    demo.add_argument("--backend", choices=("numpy", "onnxruntime"), default="numpy",
                      help="train on the NumPy executor (default) or on ONNX Runtime")
    demo.add_argument("--providers", choices=("auto", "cpu", "cuda"), default="auto",
                      help="ONNX Runtime providers with --backend onnxruntime (default auto)")
    demo.add_argument("--quick", action="store_true",
                      help="2 epochs: a fast end-to-end smoke run")
    demo.add_argument("--quiet", action="store_true", help="no per-epoch progress")
    demo.add_argument("--ranks", type=_positive, default=1,
                      help="train data-parallel on this many MPI ranks (spawns mpiexec; same "
                      "as: mpiexec -n K graphdl demo --distributed)")
    demo.add_argument("--distributed", action="store_true",
                      help="this process is one rank of an mpiexec job: train data-parallel "
                      "(the global batch stays --batch-size)")

    info = sub.add_parser("info", help="describe an ONNX file",
                          description="Print an ONNX file's inputs, outputs, opset, op "
                          "histogram and parameter count.")
    info.add_argument("file", help="path to a .onnx file")

    optimize = sub.add_parser("optimize", help="run graphdl's passes on an ONNX file",
                              description="Import an ONNX file, run graphdl's optimization "
                              "passes and write the optimized model.")
    optimize.add_argument("input", help="input .onnx file")
    optimize.add_argument("-o", "--output", required=True, help="output .onnx file")
    optimize.add_argument("--report", default=None, help="also write the pass report as JSON")
    optimize.add_argument("--import-budget", default=None, metavar="KEY=VALUE,...",
                          help="raise the limits on evaluating constants at import, for a "
                          "file you trust: fold_mb, total_mb, loop, steps, seconds (e.g. "
                          "fold_mb=256,loop=1e6,seconds=120)")

    sub.add_parser("bench", help="run the benchmark suite (options go to graphdl.bench)",
                   description="Run the benchmark suite; any further options are passed to "
                   "graphdl.bench.run.", add_help=False)
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``graphdl`` script; returns the exit status."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "bench":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return _dispatch(args, extra)
    except KeyboardInterrupt:
        print("graphdl: interrupted", file=sys.stderr)
        return EXIT_CODES["interrupted"]
    except Exception as err:
        code = _exit_code(err)
        if code is None:
            raise  # a bug in graphdl: keep the traceback
        print(f"graphdl {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return code


def _exit_code(err: Exception) -> int | None:
    """The exit status for an expected failure, None for a bug."""
    name = type(err).__name__
    if any(c.__name__ in ("OnnxImportError", "ModelFileError", "WeightsMismatchError")
           for c in type(err).__mro__):
        return EXIT_CODES["refused_input"]
    if name == "ExportError" or isinstance(err, (OSError, MemoryError)) and not isinstance(
            err, FileNotFoundError):
        return EXIT_CODES["write_failed"]
    if isinstance(err, (FileNotFoundError, ValueError, GraphError)) or name == "DemoDataError":
        return EXIT_CODES["usage"]
    return None


def _one_line(err: Exception) -> str:
    text = str(err) or type(err).__name__
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def _dispatch(args: argparse.Namespace, extra: list[str]) -> int:
    if args.command == "demo" and args.ranks > 1 and not args.distributed:
        argv = ["demo", "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
                "--out", args.out, "--seed", str(args.seed), "--threads", str(args.threads),
                *(["--quick"] if args.quick else []), *(["--quiet"] if args.quiet else [])]
        return run_ranks(args.ranks, ["-m", "graphdl.cli", *argv, "--distributed"])
    if args.command == "demo":
        results = run_demo(epochs=2 if args.quick else args.epochs, out_dir=args.out,
                           seed=args.seed, batch_size=args.batch_size,
                           verbose=0 if args.quiet else 1, threads=args.threads,
                           distributed=args.distributed, backend=args.backend,
                           providers=args.providers)
        if results is None:  # a rank other than 0: it trained; rank 0 reports
            return 0
        failed = [part for part in ("onnx", "optimize")
                  if results.get(part, {}).get("status") in ("error", "mismatch")]
        if failed:
            print(f"graphdl demo: {' and '.join(failed)} check failed (see above)",
                  file=sys.stderr)
            return 1
        return 0
    if args.command == "info":
        from graphdl.backends.onnx_info import print_info  # lazy: onnx loads in ~0.7 s

        _require_file(args.file)
        print_info(args.file)
        return 0
    if args.command == "optimize":
        _require_file(args.input)
        options = {}
        if args.import_budget is not None:
            options["budget"] = ImportBudget.parse(args.import_budget)
        result = cli_optimize(args.input, args.output, args.report, quiet=False, **options)
        return result if isinstance(result, int) else 0
    if args.command == "bench":
        from graphdl import bench  # lazy: bench loads onnx and onnxruntime (~1.5 s)

        result = bench.run(extra)
        return result if isinstance(result, int) else 0
    raise AssertionError(f"unhandled command {args.command}")  # argparse enforces the choices


def _require_file(path: str) -> None:
    if not os.path.lexists(path):
        raise FileNotFoundError(f"{path}: no such file")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
