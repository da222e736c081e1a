"""Fuzz graphdl's ONNX entry points in subprocesses: byte-level and structured mutations of
a handful of seed models, each through ``graphdl info``, ``graphdl optimize`` and
``from_onnx`` (the Python import), under a per-call timeout and a memory cap.

    python benchmarks/fuzz_onnx.py --bytes 10000 --structure 2000 --workers 2 \\
        --out benchmarks/results/fuzz_onnx.json

Workers are long-lived subprocesses (``--worker``) that run one case at a time and report
each result as a JSON line; a watchdog in the parent kills a worker whose call passes the
timeout (a *hang*) and starts a fresh one, and a worker that dies is a *native crash* (or
*memory* when it died from the memory cap). Each worker caps its address space with
``resource.setrlimit(RLIMIT_AS)`` and audits every file it opens with
``sys.addaudithook``: an open outside the case's folder (other than Python's own modules
and libraries) is counted as a read outside the model's folder.

Classes, per call: accepted, refused (a clean one-line error, exit status 2/3/4),
traceback, hang, memory, native_crash. ``--kill-test N`` also kills ONNX writers at every
injected step and at random moments and counts inconsistent model/data pairs.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENTRY_POINTS = ("info", "optimize", "import")
CLASSES = ("accepted", "refused", "traceback", "hang", "memory", "native_crash")


# ---- the worker ------------------------------------------------------------------------------

def _infrastructure_prefixes() -> tuple[str, ...]:
    import site
    import sysconfig

    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, str(ROOT)}
    dirs.update(p for p in sys.path if p)
    dirs.update(site.getsitepackages() + [site.getusersitepackages()])
    dirs.update(v for k, v in sysconfig.get_paths().items())
    out = {os.path.realpath(d) for d in dirs if d and os.path.isabs(d)}
    out.update({"/usr/lib", "/usr/share", "/usr/local/lib", "/lib", "/lib64", "/etc/ld.so",
                "/proc/self", f"/proc/{os.getpid()}", "/sys/devices/system/cpu",
                "/sys/fs/cgroup", "/dev/null", "/dev/urandom", "/etc/localtime",
                "/usr/local/share", "/etc/terminfo", "/usr/lib/locale"})
    return tuple(sorted(out))


def worker(mem_gb: float) -> None:
    """Read case specs (JSON lines) from stdin; write one result line per call."""
    import resource

    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    sys.path.insert(0, str(ROOT))
    # everything a case may touch is imported before the cap and the audit start
    import numpy  # noqa: F401
    import onnx  # noqa: F401
    import onnx.reference  # noqa: F401
    import rich.console  # noqa: F401
    import rich.table  # noqa: F401

    import graphdl  # noqa: F401
    from graphdl import cli
    from graphdl.backends import onnx_file, onnx_info  # noqa: F401
    from graphdl.backends.onnx_export import ExportError
    from graphdl.backends.onnx_import import OnnxImportError, from_onnx
    from graphdl.optimization import cli_optimize  # noqa: F401
    from tests.onnx_mutations import make_case

    cap = int(mem_gb * 2 ** 30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    allowed = _infrastructure_prefixes()
    state: dict = {"folder": None, "outside": []}

    def audit(event, args):
        if event != "open" or state["folder"] is None:
            return
        path = args[0]
        if isinstance(path, int):
            return
        path = os.fsdecode(path) if isinstance(path, bytes) else str(path)
        real = os.path.realpath(path)
        if real == state["folder"] or real.startswith(state["folder"] + os.sep):
            return
        if real.startswith(allowed):
            return
        state["outside"].append(real)
    sys.addaudithook(audit)

    current = None
    for line in sys.stdin:
        spec = json.loads(line)
        key = (spec["kind"], spec["seed"], spec["case_seed"])
        if key != current:
            base = Path(spec["dir"])
            shutil.rmtree(base, ignore_errors=True)
            path = make_case(spec["kind"], spec["seed"], spec["case_seed"], base / "m")
            current = key
        folder = os.path.realpath(path.parent)
        out = path.parent / "out.onnx"
        with contextlib.suppress(FileNotFoundError):
            out.unlink()
        state["folder"], state["outside"] = folder, []
        result = {"ep": spec["ep"]}
        err_text = io.StringIO()
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err_text):
                if spec["ep"] == "import":
                    try:
                        from_onnx(path)
                        result["class"] = "accepted"
                    except (OnnxImportError, ExportError) as err:
                        result["class"] = "refused"
                        result["detail"] = str(err)[:300]
                else:
                    argv = ["info", str(path)] if spec["ep"] == "info" else \
                        ["optimize", str(path), "-o", str(out)]
                    code = cli.main(argv)
                    text = err_text.getvalue().strip()
                    if code == 0:
                        result["class"] = "accepted"
                    elif code in (2, 3, 4) and text.startswith("graphdl ") \
                            and "\n" not in text:
                        result["class"] = "refused"
                        result["detail"] = f"[{code}] {text[:300]}"
                    else:
                        result["class"] = "traceback"
                        result["detail"] = f"[{code}] {text[:500]}"
        except MemoryError:
            result["class"] = "memory"
        except BaseException as err:  # noqa: BLE001  (the point: anything else is a defect)
            import traceback

            frame = traceback.extract_tb(err.__traceback__)[-1]
            result["class"] = "traceback"
            result["detail"] = (f"{type(err).__name__} at {os.path.basename(frame.filename)}:"
                                f"{frame.lineno}: {str(err)[:200]}")
        state["folder"] = None
        if spec["ep"] == "optimize" and result["class"] == "accepted":
            try:
                data = out.read_bytes()
                onnx.checker.check_model(str(out))
                if b"SECRET" in data:
                    result["class"], result["detail"] = "traceback", "secret bytes in output"
            except Exception as err:  # noqa: BLE001
                result["class"], result["detail"] = "traceback", f"invalid output: {err}"
        result["outside"] = sorted(set(state["outside"]))[:5]
        print(json.dumps(result), flush=True)


# ---- the parent: a pool of watched workers ---------------------------------------------------

class Worker:
    """A worker subprocess and the pipe to it."""

    def __init__(self, mem_gb: float):
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", "--mem-gb", str(mem_gb)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True, cwd=ROOT, preexec_fn=lambda: os.nice(5))
        self.lines: collections.deque = collections.deque()
        self.cond = threading.Condition()
        self.stderr: collections.deque = collections.deque(maxlen=50)
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line)
                self.cond.notify()
        with self.cond:
            self.lines.append(None)
            self.cond.notify()

    def _read_err(self):
        for line in self.proc.stderr:
            self.stderr.append(line)

    def call(self, spec: dict, timeout: float) -> dict | None:
        """The result line, or None on a hang (the worker is killed)."""
        self.proc.stdin.write(json.dumps(spec) + "\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        with self.cond:
            while not self.lines:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            line = self.lines.popleft()
        if line is None:
            self.proc.wait()
            return {"dead": self.proc.returncode}
        return json.loads(line)

    def kill(self):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def run_fuzz(cases: list[tuple[str, str, int]], workers: int, timeout: float, mem_gb: float,
             scratch: Path, progress: bool) -> dict:
    """Run every case through every entry point; returns the counts and examples."""
    counts = {ep: collections.Counter() for ep in ENTRY_POINTS}
    by_kind: dict = collections.defaultdict(collections.Counter)
    examples: dict = collections.defaultdict(list)
    outside: list = []
    lock = threading.Lock()
    todo = list(enumerate(cases))
    done = [0]

    def record(case, ep, cls, detail=None, reads=()):
        with lock:
            counts[ep][cls] += 1
            by_kind[case[0]][cls] += 1
            if cls not in ("accepted", "refused") and len(examples[cls]) < 20:
                examples[cls].append({"case": case, "ep": ep, "detail": detail})
            for r in reads:
                outside.append({"case": case, "ep": ep, "path": r})

    def run_one(slot: int):
        w = Worker(mem_gb)
        while True:
            with lock:
                if not todo:
                    break
                i, case = todo.pop()
            kind, seed, case_seed = case
            for ep in ENTRY_POINTS:
                spec = {"kind": kind, "seed": seed, "case_seed": case_seed, "ep": ep,
                        "dir": str(scratch / f"w{slot}")}
                res = w.call(spec, timeout)
                if res is None:
                    record(case, ep, "hang")
                    w.kill()
                    w = Worker(mem_gb)
                elif "dead" in res:
                    err = "".join(w.stderr)
                    cls = "memory" if ("MemoryError" in err or "bad_alloc" in err) \
                        else "native_crash"
                    record(case, ep, cls, f"exit {res['dead']}: {err[-300:]}")
                    w = Worker(mem_gb)
                else:
                    record(case, ep, res["class"], res.get("detail"), res.get("outside", ()))
            with lock:
                done[0] += 1
                if progress and done[0] % 200 == 0:
                    print(f"  {done[0]}/{len(cases)} cases", file=sys.stderr, flush=True)
        w.kill()

    threads = [threading.Thread(target=run_one, args=(s,)) for s in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    totals = collections.Counter()
    for c in counts.values():
        totals.update(c)
    return {"totals": {k: totals.get(k, 0) for k in CLASSES},
            "by_entry_point": {ep: {k: c.get(k, 0) for k in CLASSES}
                               for ep, c in counts.items()},
            "by_kind": {k: dict(v) for k, v in by_kind.items()},
            "reads_outside_model_folder": len(outside),
            "outside_examples": outside[:20],
            "examples": dict(examples)}


# ---- the kill test -----------------------------------------------------------------------------

_KILL_WRITER = """
import os, sys
import numpy as np
import graphdl as gd
from graphdl.backends import onnx_save
target, value, kill_at = sys.argv[1], float(sys.argv[2]), sys.argv[3]
x = gd.input("x", (None, 64))
w = gd.param("w", np.full((64, 8192), value, np.float32))
graph = gd.Graph([x], [gd.matmul(x, w)])
def reached(step):
    if step == kill_at:
        os._exit(9)
onnx_save._reached = reached
print("ready", flush=True)
gd.export_onnx(graph, target, external_data=True, optimize=False)
"""
STEPS = ("data_open", "data_written", "data_renamed", "model_written", "committed",
         "old_data_removed")


def _pair_value(target: Path) -> float | None:
    """The one value the committed pair holds, or None if the pair is inconsistent."""
    import numpy as np
    from onnx import numpy_helper

    from graphdl.backends.onnx_file import read_model

    try:
        model = read_model(target)
        (w,) = [numpy_helper.to_array(t) for t in model.graph.initializer]
    except Exception:  # noqa: BLE001  (an unreadable pair is an inconsistent one)
        return None
    values = np.unique(w)
    return float(values[0]) if values.size == 1 else None


def kill_test(runs: int, scratch: Path, rng: random.Random) -> dict:
    """Kill writers at every injected step and at random moments; count bad pairs."""
    folder = scratch / "kill"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    target = folder / "m.onnx"
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    subprocess.run([sys.executable, "-c", _KILL_WRITER, str(target), "1", "none"], env=env,
                   check=True, capture_output=True)
    committed = 1.0
    stats = collections.Counter()
    for i in range(runs):
        value = float(i + 2)
        step = STEPS[i % len(STEPS)] if i < 2 * len(STEPS) or rng.random() < 0.5 else "none"
        proc = subprocess.Popen([sys.executable, "-c", _KILL_WRITER, str(target), str(value),
                                 step], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if step == "none":  # a random moment: SIGKILL while the save runs
            proc.stdout.readline()
            time.sleep(rng.uniform(0, 0.4))
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        proc.communicate()
        got = _pair_value(target)
        if got is None or got not in (committed, value):
            stats["inconsistent"] += 1
        else:
            stats["new" if got == value else "old"] += 1
            committed = got
        stats[f"killed_at_{step}"] += 1
    before = len(os.listdir(folder)) - 2  # besides the model and the data it references
    subprocess.run([sys.executable, "-c", _KILL_WRITER, str(target), "0", "none"], env=env,
                   check=True, capture_output=True)  # the next clean save tidies up
    after = len(os.listdir(folder)) - 2
    return {"runs": runs, "inconsistent_pairs": stats.pop("inconsistent", 0),
            "kept_old": stats.pop("old", 0), "committed_new": stats.pop("new", 0),
            "kill_points": dict(stats), "leftover_files_after_the_last_kill": before,
            "leftover_files_after_the_next_clean_save": after}


# ---- main ------------------------------------------------------------------------------------

def main(argv=None) -> int:
    """Run the fuzz campaign and write the JSON report."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bytes", type=int, default=200, help="byte-level mutation cases")
    p.add_argument("--structure", type=int, default=100, help="structured mutation cases")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--timeout", type=float, default=20.0, help="seconds per call")
    p.add_argument("--mem-gb", type=float, default=4.0, help="address-space cap per worker")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kill-test", type=int, default=0, help="writer kills to run")
    p.add_argument("--out", default=None, help="JSON report path")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.mem_gb)
        return 0
    sys.path.insert(0, str(ROOT))
    import onnx

    from tests.onnx_mutations import SEEDS

    rng = random.Random(args.seed)
    cases = [("bytes", SEEDS[i % len(SEEDS)], rng.getrandbits(32)) for i in range(args.bytes)]
    cases += [("structure", SEEDS[i % len(SEEDS)], rng.getrandbits(32))
              for i in range(args.structure)]
    rng.shuffle(cases)
    scratch = Path(tempfile.mkdtemp(prefix="graphdl_fuzz_"))
    started = time.time()
    try:
        report = run_fuzz(cases, args.workers, args.timeout, args.mem_gb, scratch, True)
        if args.kill_test:
            report["kill_test"] = kill_test(args.kill_test, scratch, rng)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report = {"cases": {"bytes": args.bytes, "structure": args.structure,
                        "entry_points": list(ENTRY_POINTS),
                        "calls": len(cases) * len(ENTRY_POINTS)},
              "config": {"timeout_s": args.timeout, "mem_cap_gib": args.mem_gb,
                         "workers": args.workers, "seed": args.seed},
              "onnx_version": onnx.__version__, "python": sys.version.split()[0],
              "wall_s": round(time.time() - started, 1), **report}
    text = json.dumps(report, indent=2)
    if args.out:
        sys.path.insert(0, str(ROOT))
        from graphdl.atomic import write_text

        write_text(args.out, text + "\n")
    print(json.dumps({k: report[k] for k in ("totals", "reads_outside_model_folder")}))
    if "kill_test" in report:
        print(json.dumps(report["kill_test"]))
    bad = sum(report["totals"][k] for k in CLASSES[2:]) + report["reads_outside_model_folder"]
    return 1 if bad or report.get("kill_test", {}).get("inconsistent_pairs") else 0


if __name__ == "__main__":
    sys.exit(main())
