"""The progress display ``fit`` shows: a rich bar per epoch (loss, throughput), then one
summary line per epoch. ``verbose=0`` shows nothing, ``verbose=2`` only the summary lines."""
from __future__ import annotations

import time


class FitProgress:
    """Reports batches and epochs of one ``fit`` run to a rich console."""

    def __init__(self, verbose: int, epochs: int, steps: int, console=None):
        self.verbose = int(verbose)
        self.epochs = epochs
        self.steps = steps
        self._progress = None
        self._task = None
        self._console = console
        if self.verbose:
            from rich.console import Console  # lazy: rich adds ~0.15 s to `import graphdl`

            self._console = console or Console()

    def start_epoch(self, epoch: int) -> None:
        """Open the bar for ``epoch`` (0-based)."""
        self._start = time.perf_counter()
        if self.verbose != 1 or not self._console.is_terminal:
            return
        # lazy: rich adds ~0.15 s to `import graphdl`
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, \
            TimeElapsedColumn

        self._progress = Progress(
            TextColumn(f"Epoch {epoch + 1}/{self.epochs}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), TimeElapsedColumn(),
            console=self._console, transient=True)
        self._progress.start()
        self._task = self._progress.add_task("train", total=self.steps, stats="")

    def update(self, batch: int, samples: int, logs: dict[str, float]) -> None:
        """Advance the bar after ``batch`` (0-based) with running metrics."""
        if self._progress is None:
            return
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        stats = "  ".join(f"{k} {v:.4f}" for k, v in logs.items())
        self._progress.update(self._task, completed=batch + 1,
                              stats=f"{stats}  {samples / elapsed:,.0f} samples/s")

    def end_epoch(self, epoch: int, logs: dict[str, float], seconds: float,
                  samples: int) -> None:
        """Close the bar and print the epoch's summary line."""
        self.close()
        if not self.verbose:
            return
        stats = "  ".join(f"{k} {v:.4f}" for k, v in logs.items())
        rate = samples / max(seconds, 1e-9)
        self._console.print(f"Epoch {epoch + 1}/{self.epochs}  {self.steps}/{self.steps}  "
                            f"{seconds:.2f}s  {stats}  {rate:,.0f} samples/s",
                            highlight=False, soft_wrap=True)

    def close(self) -> None:
        """Stop the live bar, if one is showing."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
