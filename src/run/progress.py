"""Progress of long explanations (optimisation loops of thousands of steps): a bar in Lightning's
style when stderr is a terminal (a task in the trainer's RichProgressBar display while that is
showing, else a tqdm bar as Lightning's TQDMProgressBar draws them, on stderr), the step count in
the log every 10 % or 30 s whatever the terminal, and a check for SIGINT / SIGTERM / SIGUSR1
(src.run.interrupt) at every step.

The loops themselves (src/xai/) only take `progress(done, total)`, called once per step:

    with progress("morph_path", trainer) as p:                    # a cooperative region
        out = morph_path(..., progress=p.phase)                   # one bar per phase
        am = activation_maximisation(..., progress=p.phase("am"))  # or one loop

A progress callable raises (KeyboardInterrupt or SIGTERMException) to stop the loop."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable

from src.run import interrupt

log = logging.getLogger(__name__)

BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}{postfix}]"  # Lightning's


def _interval(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, s = divmod(int(round(seconds)), 60)
    h, m = divmod(minutes, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class TqdmBar:
    """A tqdm bar as Lightning's TQDMProgressBar draws them, on the terminal's stderr (not through
    a rich live display's proxy, which would keep every update without a newline)."""

    def __init__(self, desc: str, total: int) -> None:
        from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

        stream = getattr(sys.stderr, "rich_proxied_file", sys.stderr)
        self.bar = Tqdm(desc=desc, total=total, file=stream, dynamic_ncols=True, leave=False, bar_format=BAR_FORMAT)

    def update(self, done: int) -> None:
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        self.bar.close()


class RichTaskBar:
    """A task in the live display of Lightning's RichProgressBar (its columns: description, bar,
    n/total, elapsed • remaining, rate), redrawn at most 10 times a second; hidden, not removed,
    when done (Lightning indexes the display's task list by task id)."""

    def __init__(self, callback, desc: str, total: int) -> None:
        self.callback, self.progress = callback, callback.progress
        style = callback.theme.description
        self.task = self.progress.add_task(f"[{style}]{desc}" if style else desc, total=total)
        self._drawn = 0.0

    def update(self, done: int) -> None:
        self.progress.update(self.task, completed=done)
        now = time.monotonic()
        if now - self._drawn >= 0.1:
            self._drawn = now
            self.callback.refresh()

    def close(self) -> None:
        self.progress.update(self.task, visible=False)
        self.callback.refresh()


BarFactory = Callable[[str, int], "TqdmBar | RichTaskBar"]


class StepProgress:
    """`progress(done, total)` for one loop: updates the bar (`bar(desc, total)` makes it), logs
    "desc: done/total (pct%) [elapsed<eta, rate steps/s]" on the first step, every `log_fraction`
    of the total, every `log_seconds` and on the last step, then calls `stop()` (which raises to
    stop the loop). `close()` ends the bar and logs where the loop ended if not logged yet."""

    def __init__(
        self,
        desc: str,
        *,
        bar: BarFactory | None = None,
        stop: Callable[[], None] | None = None,
        log_fraction: float = 0.1,
        log_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.desc, self.stop = desc, stop
        self.log_fraction, self.log_seconds, self.clock = log_fraction, log_seconds, clock
        self.done, self.total = 0, None
        self._make_bar, self._bar = bar, None
        self._start = clock()
        self._last_log: float | None = None
        self._logged_at: int | None = None
        self._next_mark = 0
        self._closed = False

    def __call__(self, done: int, total: int) -> None:
        done, total = int(done), int(total)
        first = self.total is None
        self.done, self.total = done, total
        if self._make_bar is not None and not self._closed:
            if self._bar is None:
                self._bar = self._make_bar(self.desc, total)
            self._bar.update(done)
        now = self.clock()
        if first or done >= self._next_mark or done >= total or now - self._last_log >= self.log_seconds:
            self._log(now)
        if self.stop is not None:
            self.stop()

    def message(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        elapsed = max(now - self._start, 1e-9)
        total = self.total or 0
        rate = self.done / elapsed
        eta = (total - self.done) / rate if rate > 0 else float("inf")
        pct = 100 * self.done / total if total else 100.0
        return (
            f"{self.desc}: {self.done}/{total} ({pct:.0f}%) "
            f"[{_interval(elapsed)}<{_interval(max(eta, 0.0))}, {rate:.3g} steps/s]"
        )

    def _log(self, now: float) -> None:
        log.info("%s", self.message(now))
        self._last_log, self._logged_at = now, self.done
        step = max(1, math.ceil((self.total or 0) * self.log_fraction))
        self._next_mark = (self.done // step + 1) * step

    def close(self, interrupted: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        if self.total is None:
            return
        if interrupted:
            log.info("%s (interrupted)", self.message())
        elif self._logged_at != self.done:
            log.info("%s (done)", self.message())


def _bar_wanted(trainer) -> bool:
    """A bar on a terminal, unless the trainer's progress bar is switched off."""
    if trainer is not None and getattr(trainer, "progress_bar_callback", None) is None:
        return False
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def bar_factory(trainer) -> BarFactory:
    """Tasks in the trainer's RichProgressBar display while it shows, else tqdm bars."""
    callback = getattr(trainer, "progress_bar_callback", None)
    live = getattr(callback, "progress", None) is not None and not getattr(callback, "_progress_stopped", True)
    if live and getattr(callback, "is_enabled", False) and hasattr(callback, "theme"):
        return lambda desc, total: RichTaskBar(callback, desc, total)
    return TqdmBar


class Progress:
    """A long computation's progress and its cooperative region (src.run.interrupt): called as
    `p(done, total)` for one loop, or `p.phase(name)` for one loop of several in turn (each phase
    ends the one before). Checks for a stop on entry, at every step and on a clean exit; also
    Lightning's `trainer.received_sigterm` when given the trainer."""

    def __init__(self, desc: str, trainer=None, bar: bool | None = None, **options) -> None:
        self.desc, self.trainer = desc, trainer
        self.bar = _bar_wanted(trainer) if bar is None else bar  # False: the log only
        self.options = options
        self._main: StepProgress | None = None
        self._phase: StepProgress | None = None
        self._region = None

    def check(self) -> None:
        interrupt.check(self.trainer)

    def _new(self, desc: str) -> StepProgress:
        bar = bar_factory(self.trainer) if self.bar else None  # the trainer's display may start or stop
        return StepProgress(desc, bar=bar, stop=self.check, **self.options)

    def __call__(self, done: int, total: int) -> None:
        if self._main is None:
            self._main = self._new(self.desc)
        self._main(done, total)

    def phase(self, name: str) -> StepProgress:
        if self._phase is not None:
            self._phase.close()
        self._phase = self._new(f"{self.desc}: {name}")
        return self._phase

    def close(self, interrupted: bool = False) -> None:
        for bar in (self._phase, self._main):
            if bar is not None:
                bar.close(interrupted)

    def __enter__(self) -> Progress:
        self._region = interrupt.cooperative()
        self._region.__enter__()
        try:
            self.check()
        except BaseException:
            self._region.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(interrupted=exc_type is not None)
        self._region.__exit__(exc_type, exc, tb)
        if exc_type is None:
            self.check()  # a stop requested after the last step


def progress(desc: str, trainer=None, bar: bool | None = None, **options) -> Progress:
    """The progress of a long computation named `desc` (use as a context manager)."""
    return Progress(desc, trainer, bar, **options)
