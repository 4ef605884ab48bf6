"""Process settings of the entry points: glibc keeps large freed buffers (in this process, in
forked and in spawned workers), and the known third-party console noise is filtered."""

import logging
import os
import subprocess
import sys
import warnings

import pytest

from src.run.runtime import MALLOC_ENV, quiet_third_party
from src.testing.compose import ROOT

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator settings")

# Where does a 64 MiB malloc land? glibc's default serves it with its own mmap (outside the
# [heap] of /proc/self/maps) and unmaps it on free; with the buffers kept it comes from the heap.
PROBE = """
import ctypes, multiprocessing as mp, os, sys
def in_heap(_=None):
    libc = ctypes.CDLL("libc.so.6"); libc.malloc.restype = ctypes.c_void_p
    ptr = libc.malloc(64 << 20)
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            lo, hi = (int(v, 16) for v in line.split()[0].split("-"))
            return lo <= ptr < hi
    return False
if __name__ == "__main__":
    from src.run.runtime import keep_malloc_buffers
    applied = keep_malloc_buffers(sys.argv[1] == "on")
    with mp.get_context("spawn").Pool(1) as pool: spawned = pool.apply(in_heap)
    with mp.get_context("fork").Pool(1) as pool: forked = pool.apply(in_heap)
    print(applied, in_heap(), forked, spawned)
"""


def probe(tmp_path, setting: str, **env: str) -> list[str]:
    script = tmp_path / "probe.py"  # a file: spawned workers import their function from it
    script.write_text(PROBE)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env | {"PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, str(script), setting],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return out.stdout.split()


def test_large_buffers_come_from_the_heap_in_this_process_and_its_workers(tmp_path):
    assert probe(tmp_path, "on") == ["True", "True", "True", "True"]  # applied; here, forked, spawned


def test_without_the_setting_glibc_maps_large_buffers_itself(tmp_path):
    assert probe(tmp_path, "off") == ["False", "False", "False", "False"]


def test_settings_the_user_made_are_kept(tmp_path):
    # the user's own (default-like) threshold and top pad win: 64 MiB blocks are mmapped again, here and in
    # workers (with a 1 GiB top pad the heap's free top would serve them whatever the threshold)
    user = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20), "MALLOC_TOP_PAD_": str(128 << 10)}
    assert probe(tmp_path, "on", **user) == ["True", "False", "False", "False"]


def test_environment_carries_the_settings_to_new_processes():
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os; from src.run.runtime import keep_malloc_buffers; "
            "keep_malloc_buffers(); print(*(os.environ[k] for k in sorted(os.environ) "
            "if k.startswith('MALLOC_')))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")},
        check=True,
    )
    assert out.stdout.split() == [MALLOC_ENV[k] for k in sorted(MALLOC_ENV)]


def test_known_third_party_noise_is_filtered_and_other_messages_are_not(caplog):
    quiet_third_party()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        quiet_third_party()  # the filters go in front of the catch-all
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
        warnings.warn("`torch.jit.script` is deprecated. Please switch to `torch.compile`", FutureWarning, stacklevel=1)
        warnings.warn("something else is deprecated", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something else is deprecated"]
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with caplog.at_level(logging.INFO, logger=logger.name):
        logger.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger](...)")
        logger.info("`Trainer.fit` stopped: `max_epochs=1` reached.")
    assert [r.getMessage() for r in caplog.records] == ["`Trainer.fit` stopped: `max_epochs=1` reached."]
