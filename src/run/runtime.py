"""Process settings the entry points apply before any work: glibc's allocator keeps freed tensor
buffers (`fast.malloc`), and known third-party console noise is filtered precisely."""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import warnings
from pathlib import Path

log = logging.getLogger(__name__)

# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
KEEP = 2**31 - 1  # mallopt takes an int: the largest value it accepts
# the same settings as environment variables, which glibc reads when a new process starts
MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(KEEP),
    "MALLOC_TRIM_THRESHOLD_": str(KEEP),
    "MALLOC_TOP_PAD_": str(1 << 30),
}


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018  (musl and others have no such symbol)
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc


def keep_malloc_buffers(enabled: bool = True) -> bool:
    """Make glibc keep freed memory for reuse instead of handing it back to the OS after each step.

    By default glibc serves every allocation over 128 KiB-32 MiB (its threshold adapts) with its own
    mmap and unmaps it on free, and trims the heap top above 128 KiB: a training step that frees and
    re-allocates the same activation buffers then page-faults all of them in again. Here large
    blocks come from the heap, freed memory stays mapped, and the heap grows in 1 GiB steps of
    address space (pages are backed only when touched). The cost is that the process keeps its
    peak memory until it exits. Set for this process (`mallopt`) and, through MALLOC_*_ variables,
    for processes it spawns (DDP ranks, spawned loader workers); forked workers inherit it.
    Variables the user set are left alone. Returns whether it applied (False off Linux/glibc or
    when disabled)."""
    if not enabled:
        return False
    libc = _glibc()
    if libc is None:
        return False
    ok = all(
        libc.mallopt(param, value) == 1
        for param, value in (
            (M_MMAP_THRESHOLD, int(os.environ.get("MALLOC_MMAP_THRESHOLD_", KEEP))),
            (M_TRIM_THRESHOLD, int(os.environ.get("MALLOC_TRIM_THRESHOLD_", KEEP))),
            (M_TOP_PAD, int(os.environ.get("MALLOC_TOP_PAD_", 1 << 30))),
        )
    )
    if not ok:
        log.warning("glibc refused the allocator settings (fast.malloc); continuing with its defaults")
        return False
    for key, value in MALLOC_ENV.items():
        os.environ.setdefault(key, value)
    return True


def quiet_third_party() -> None:
    """Filter the known, harmless messages third-party packages print on every run, each by its
    exact text and category, so anything new still shows."""
    # Lightning's advertisement for litlogger / litmodels, logged at INFO at every Trainer start
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_no_lightning_tips)
    # Lightning 2.6 constructs torch's deprecated LeafSpec in every loop (lightning/pytorch/utilities/_pytree.py)
    leafspec = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
    warnings.filterwarnings("ignore", message=leafspec, category=FutureWarning)
    # torch scripts its forward-mode AD decompositions on the first JVP (torch/_decomp/decompositions_for_jvp.py)
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    # Lightning on a resume mid-epoch: src.training.run_safety.ResumeState resumes our EpochShuffle loaders
    # in the middle of the epoch (and warns itself for any other loader)
    warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended")
    # Captum's note that guided backprop / deconvnet put hooks on ReLUs, on every call
    warnings.filterwarnings("ignore", message=r"Setting backward hooks on ReLU activations", category=UserWarning)


def _no_lightning_tips(record: logging.LogRecord) -> bool:
    text = record.getMessage()
    return not (text.startswith("💡 Tip") or "litlogger" in text or "litmodels" in text)


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def prepare_process(cfg) -> None:
    """What every entry point does first, with `fast.malloc` from its config (default on)."""
    quiet_third_party()
    keep_malloc_buffers(bool((cfg.get("fast") or {}).get("malloc", True)))


class RunLogFile(logging.FileHandler):
    """Hydra's run log (<run>/train.log), appended to. A file that cannot be opened (a read-only or
    full disk) is said once on stderr and the log goes to the console only, so the entry point
    starts and names the folder at fault itself, instead of Hydra failing with a traceback."""

    def __init__(self, filename: str, mode: str = "a", encoding: str | None = None, delay: bool = False) -> None:
        try:
            super().__init__(filename, mode, encoding, delay)
        except OSError as exc:
            logging.Handler.__init__(self)
            self.baseFilename, self.stream = filename, None
            print(f"latent-lens: cannot write the run log {filename} ({exc.strerror})", file=sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        if self.stream is not None:
            super().emit(record)


def check_writable(folder: str | Path, key: str = "hydra.run.dir") -> None:
    """A ConfigError naming `folder` unless this process can write there (os.access also sees a
    read-only file system, for root too)."""
    from src.base.errors import ConfigError

    folder = Path(folder)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), folder)
    if not os.access(existing, os.W_OK):
        cause = "a read-only file system" if _read_only(existing) else "no permission to write"
        raise ConfigError(key, str(folder), f"{existing}: {cause}; point {key} (or paths.log_dir) at a writable folder")
