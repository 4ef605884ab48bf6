"""What every bench script shares: the device, the machine description, timing and JSON output.

bench/ is on sys.path when a script runs as `python bench/NAME.py`, so scripts `import common`.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUTPUT_DIR = "/tmp/latent-lens-bench"
sys.path.insert(0, str(ROOT))  # the tests' real-format writers and config composer


def device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="cpu | cuda | auto (cuda when available)")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def parse_args(
    parser: argparse.ArgumentParser | None = None, **defaults: int | float | str
) -> tuple[argparse.Namespace, torch.device]:
    """The command line: --device, one option per keyword (`batch_size=32` -> `--batch-size`, typed
    like its default), added to `parser` when given (for options that need more than a default);
    (the arguments, the device picked)."""
    parser = parser or argparse.ArgumentParser()
    device_argument(parser)
    for key, default in defaults.items():
        parser.add_argument("--" + key.replace("_", "-"), type=type(default), default=default)
    args = parser.parse_args()
    return args, pick_device(args.device)


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(device: torch.device) -> dict:
    """Where a figure came from: architecture, CPU model and threads, GPU name, torch version."""
    info = {
        "machine": platform.machine(),
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": device.type,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_ticks() -> tuple[int, int] | None:
    """(steal, total) CPU ticks from /proc/stat (Linux), or None."""
    try:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    return ticks[7], sum(ticks)


_TICKS_AT_START = _cpu_ticks()


def cpu_steal() -> float | None:
    """Share of this machine's CPU time taken by the hypervisor for other guests since the script
    started: a figure taken while it is well above 0 ran on a fraction of the machine."""
    now, start = _cpu_ticks(), _TICKS_AT_START
    if now is None or start is None or now[1] == start[1]:
        return None
    return round((now[0] - start[0]) / (now[1] - start[1]), 3)


def emit_record(record: dict) -> None:
    """One JSON line, with the CPU steal share so far (see cpu_steal)."""
    print(json.dumps({**record, "cpu_steal": cpu_steal()}), flush=True)


def emit(bench: str, **fields) -> None:
    """One JSON line: {"bench": ..., fields..., "cpu_steal": ...}."""
    emit_record({"bench": bench, **fields})


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int = 3, warmup: int = 1) -> list[float]:
    """Seconds per call of `fn`, `repeats` times after `warmup` untimed calls (GPU synchronised)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def interleaved_best(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int = 3) -> dict[str, float]:
    """Best seconds per call of each function, timed in turn after one warm-up call each, the order
    reversed every other round (a, b, b, a, a, b, ...) so a shared machine's drift, and whatever
    going first or second costs, hits every contender alike."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for round_ in range(repeats):
        for name in list(fns)[:: -1 if round_ % 2 else 1]:
            best[name] = min(best[name], timed(fns[name], device, repeats=1, warmup=0)[0])
    return best


def median(values: list[float]) -> float:
    return statistics.median(values)


def compose_cfg(overrides: list[str], output_dir: str | Path = OUTPUT_DIR, data_dir: str | Path | None = None):
    """conf/train.yaml composed as `python -m src.train <overrides>` would, run folder `output_dir`,
    downloads and caches under `data_dir` (default <output_dir>/data): the tests' composer, no logger."""
    import src.config.resolvers  # noqa: F401  (registers the config resolvers)
    from src.testing.compose import compose_train_cfg

    cfg = compose_train_cfg(Path(output_dir), ["logger=none", *overrides])
    if data_dir is not None:
        cfg.paths.data_dir = str(data_dir)
    return cfg


def train_step_rate(model, batches: list[dict], device: torch.device, repeats: int = 3) -> float:
    """Training images/s of `model.loss_terms` (forward + backward + its optimizer step) over
    `batches` on `device`; best of `repeats` passes after a warm-up step."""
    from src.data.in_memory import to_float
    from src.models.optim import build_optimizer

    model.to(device).train()
    optimizer = build_optimizer(model.parameters(), model.optimizer_cfg)
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    for b in batches:  # a loader's uint8 images become float on the device, as in training
        if b["image"].dtype == torch.uint8:
            b["image"] = to_float(b["image"])

    def run(items=batches):
        for batch in items:
            optimizer.zero_grad(set_to_none=True)
            model.loss_terms(batch, 1.0)["loss"].backward()
            optimizer.step()

    timed(lambda: run(batches[:2]), device, repeats=1, warmup=0)
    best = min(timed(run, device, repeats=repeats, warmup=0))
    return sum(len(b["image"]) for b in batches) / best


def fashion_pair(n: int) -> tuple[argparse.ArgumentParser, Callable]:
    """For the scripts that explain a trained FashionMNIST classifier through a trained VAE: a parser
    with CLASSIFIER.ckpt, VAE.ckpt, --n (default `n`) and --device, and `load(args)` -> (device,
    classifier, vae, datamodule, rows, batch): both models frozen in eval mode, glibc keeping freed
    buffers as the entry points do, and `rows` the first --n test images of a seed-123 permutation
    (as `experiment=fashion_path_mask`) with their `batch`."""
    parser = argparse.ArgumentParser()
    parser.add_argument("classifier")
    parser.add_argument("vae")
    parser.add_argument("--n", type=int, default=n)
    parser.add_argument("--device", default="cpu")

    def load(args: argparse.Namespace):
        from src.data.mnist_like import FashionMNISTDataModule
        from src.models.classifier import Classifier
        from src.models.vae import VAE
        from src.run.checkpoints import load_module
        from src.run.runtime import keep_malloc_buffers

        keep_malloc_buffers()
        device = pick_device(args.device)
        clf = load_module(args.classifier, Classifier, "classifier").to(device).eval()
        vae = load_module(args.vae, VAE, "vae").to(device).eval()
        for p in [*clf.parameters(), *vae.parameters()]:
            p.requires_grad_(False)
        data = FashionMNISTDataModule(val_size=5000, seed=0)
        data.setup()
        rows = torch.randperm(len(data.test_set), generator=torch.Generator().manual_seed(123))[: args.n].tolist()
        return device, clf, vae, data, rows, data.test_set.__getitems__(rows)

    return parser, load


def train_norm_means(vae, data, device: torch.device, num_classes: int = 10) -> torch.Tensor:
    """[num_classes] the mean ||mu|| of each class over `data`'s training set (the path-mask thesis'
    norm_means, `src.xai.morph.semantic.class_norm_means`), encoded in chunks of 2,048."""
    from src.xai.morph.pipeline import norm_statistics
    from src.xai.morph.semantic import class_norm_means

    train = data.train_set
    chunks = []
    for i in range(0, len(train), 2048):
        b = train.__getitems__(list(range(i, min(i + 2048, len(train)))))
        chunks.append((b["image"].to(device), b["label"]))
    norms, labels = norm_statistics(vae.encode, chunks)
    return class_norm_means(norms, labels, num_classes)
