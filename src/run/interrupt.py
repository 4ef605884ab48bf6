"""Stop long work cleanly on SIGINT (Ctrl-C), SIGTERM and SIGUSR1 (SLURM's warning before the kill).

Training (`trainer.fit`) stops between two batches, whatever the signal and wherever it arrives
(mid-forward, during validation, during the explanations): the handlers only record it, and the
run stops at the next batch boundary that every rank agrees on (src.run.distributed), where
InterruptCheckpoint (src.training.run_safety) saves last.ckpt, so a resume is exact. An
explanation rendering at an epoch end stops at its next step (below), keeps what it wrote, and
the epoch ends normally (its checkpoint is saved) before the run stops.

Inside a `cooperative()` region (a long explanation loop that calls `check()` between its steps,
see src.run.progress) the first signal is recorded, after calling the handlers below ours (Lightning's,
SLURM's checkpoint-and-requeue), and `check()` raises it at the next step: KeyboardInterrupt for
SIGINT, SIGTERMException for SIGTERM / SIGUSR1. A second signal stops at once (mid-batch: that
resume replays the batch). Regions chain over whatever handlers are in place and put them back.

Outside training and regions, Ctrl-C raises KeyboardInterrupt at once; with `install()` (an entry
point's `main`, through `installed()`), SIGTERM / SIGUSR1 where no trainer handles them raise
SIGTERMException instead of killing the process unannounced. Lightning's _SignalConnector wraps
the SIGTERM handler it finds (ours) and restores it after the run, but installs its SLURM SIGUSR1
requeue handler only where none is set: under SLURM `install()` leaves SIGUSR1 to Lightning.

Exit statuses (src.run.task.run_task): 130 for SIGINT, 143 for SIGTERM and SIGUSR1."""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)

SIGNALS: tuple[int, ...] = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, name)
)


class _State:
    received: int | None = None  # the first stop signal (for the exit status and message)
    pending: int | None = None  # a stop not raised yet (check() raises it once)
    depth: int = 0  # nested cooperative() regions
    training: bool = False  # inside between_batches(): training stops at a batch boundary
    remote: Callable[[], int | None] | None = None  # a stop posted by another process (set_remote)


def received() -> int | None:
    """The first stop signal received (a signal number), or None."""
    return _State.received


def request(signum: int) -> bool:
    """Record a stop as if `signum` had arrived (what the handlers do): the next `check()` raises.
    True when no stop was pending."""
    first = _State.pending is None
    if first:
        _State.pending = signum
    if _State.received is None:
        _State.received = signum
    return first


def reset() -> None:
    """Forget the signals received (a new run; tests)."""
    _State.received = _State.pending = None
    _State.remote = None


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_code(signum: int) -> int:
    """130 for SIGINT, 143 for SIGTERM and SIGUSR1 (SLURM's advance warning of SIGTERM)."""
    return 128 + (signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)


def stop_exception(signum: int) -> BaseException:
    """KeyboardInterrupt for SIGINT, else SIGTERMException (a SystemExit with status 143): the two
    exceptions Lightning and InterruptCheckpoint treat as an interruption."""
    if signum == signal.SIGINT:
        return KeyboardInterrupt()
    return SIGTERMException(exit_code(signum))


def requested(trainer=None) -> int | None:
    """The stop signal not acted on yet, counting Lightning's SIGTERM flag on `trainer` (set by its
    own handler, also when `install()` was never called)."""
    if _State.pending is not None:
        return _State.pending
    if trainer is not None and getattr(trainer, "received_sigterm", False):
        return signal.SIGTERM
    if _State.remote is not None and _State.received is None and (signum := _State.remote()) is not None:
        request(signum)
        return signum
    return None


def set_remote(poll: Callable[[], int | None] | None) -> None:
    """Let `requested()` (and so `check()` between the steps of a render) also stop on a signal
    another process received: `poll()` returns its number, or None (src.run.distributed.RenderGate)."""
    _State.remote = poll


def check(trainer=None) -> None:
    """Raise the stop exception if a stop was requested (cheap: call it every step). A signal is
    raised once: a process that goes on after it (a notebook) is not stopped again by it."""
    signum = requested(trainer)
    if signum is not None:
        _State.pending = None
        raise stop_exception(signum)


def signal_behind(exc: BaseException) -> int | None:
    """The stop signal `exc` comes from: the one received, else read from the exception (chain):
    KeyboardInterrupt -> SIGINT, SIGTERMException -> SIGTERM. Lightning turns a KeyboardInterrupt
    into sys.exit(1) after its graceful shutdown; the chain still shows it."""
    seen = set()
    found = None
    while exc is not None and id(exc) not in seen and found is None:
        seen.add(id(exc))
        if isinstance(exc, KeyboardInterrupt):
            found = signal.SIGINT
        elif isinstance(exc, SIGTERMException):
            found = signal.SIGTERM
        exc = exc.__cause__ or exc.__context__
    if found is None:
        return None
    return _State.received if _State.received is not None else found


class _Handler:
    """Records the stop signal, defers it inside a cooperative region (first time), else stops at
    once; chains to the handler it replaced. When another handler was installed over it (Lightning
    wraps SIGTERM during a run) it only records: the one on top decides."""

    def __init__(self, previous) -> None:
        self.previous = previous

    def _call_previous(self, signum: int, frame: FrameType | None) -> None:
        if callable(self.previous) and self.previous is not signal.default_int_handler:
            self.previous(signum, frame)

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        first = request(signum)
        if signal.getsignal(signum) is not self:
            return  # called by a handler above ours (Lightning's): it acts
        name = signal_name(signum)
        if _State.depth > 0 and first:
            if signum != signal.SIGINT:
                self._call_previous(signum, frame)  # Lightning: forward to DDP children, SLURM checkpoint + requeue
            log.warning("%s received: stopping at the next step (send it again to stop at once)", name)
            return
        if first and _State.depth == 0 and _State.training:  # src.run.distributed stops it between batches
            log.warning("%s received: stopping after this batch (send it again to stop at once)", name)
            return
        self._call_previous(signum, frame)
        _State.pending = None  # raised here and now
        raise stop_exception(signum)


@contextlib.contextmanager
def between_batches() -> Iterator[None]:
    """Around `trainer.fit` when the trainer stops at batch boundaries on a recorded signal
    (src.run.distributed.stops_agree_across_ranks): outside cooperative regions, SIGINT and SIGUSR1
    are only recorded, like SIGTERM."""
    _State.training = True
    try:
        yield
    finally:
        _State.training = False


def raise_if_stopped(trainer=None) -> None:
    """After `trainer.fit` / `validate` returned although a stop signal came (it stopped at an
    epoch end, or during the explanations), raise the stop, so the entry point exits 130 / 143
    and does not go on to test or to write its summary."""
    signum = received()
    if signum is None and trainer is not None and getattr(trainer, "received_sigterm", False):
        signum = signal.SIGTERM
    if signum is not None:
        _State.pending = None
        raise stop_exception(signum)


def _swap_in(signum: int) -> _Handler | None:
    """Put a _Handler over the current handler of `signum` (None where it is ours already, ignored
    or not a Python handler, or where signals cannot be set: not the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    current = signal.getsignal(signum)
    if current in (None, signal.SIG_IGN) or isinstance(current, _Handler):
        return None
    handler = _Handler(current)
    signal.signal(signum, handler)
    return handler


def _on_slurm() -> bool:
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return SLURMEnvironment.detect()


def install() -> list[tuple[int, _Handler]]:
    """Process-wide handlers for SIGINT, SIGTERM and SIGUSR1 (not under SLURM, where Lightning's
    requeue handler needs SIGUSR1 free). Call once at an entry point, before the trainer exists;
    idempotent; a signal set to be ignored stays ignored; does nothing off the main thread.
    Returns the (signal, handler) pairs it put in place."""
    swapped = []
    for signum in SIGNALS:
        if signum == getattr(signal, "SIGUSR1", None) and _on_slurm():
            continue
        if (handler := _swap_in(signum)) is not None:
            swapped.append((signum, handler))
    return swapped


def uninstall(swapped: list[tuple[int, _Handler]] | None = None) -> None:
    """Put back the handlers `install()` replaced (those it returned, or all of ours on top)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in SIGNALS:
        current = signal.getsignal(signum)
        if isinstance(current, _Handler) and (swapped is None or (signum, current) in swapped):
            signal.signal(signum, current.previous)


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """`install()` for the duration (an entry point's `main`); the handlers are put back after.
    When a stop signal ends the process, the interpreter's final garbage collection over every
    torch / Lightning object (seconds on a busy machine) is skipped (gc.freeze; atexit handlers
    such as logging's flush still run, and the trainer has finalised its loggers by then), so
    the process is gone well within the 5 s a scheduler may allow."""
    reset()
    swapped = install()
    try:
        yield
    except BaseException:
        if _State.received is not None:
            gc.freeze()
        raise
    finally:
        uninstall(swapped)


@contextlib.contextmanager
def cooperative() -> Iterator[None]:
    """A region whose code calls `check()` often (between optimisation steps): the first stop signal
    is deferred to that check instead of interrupting wherever the code happens to be. Chains over
    the handlers in place (Lightning's during a run) for its duration."""
    swapped = [(signum, handler) for signum in SIGNALS if (handler := _swap_in(signum)) is not None]
    _State.depth += 1
    try:
        yield
    finally:
        _State.depth -= 1
        for signum, handler in reversed(swapped):
            if signal.getsignal(signum) is handler:
                signal.signal(signum, handler.previous)
