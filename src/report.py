"""One report for a Hydra sweep, from its run folders alone:
python -m src.report outputs/multiruns/<task>/<time> [--out DIR]

Writes `<sweep>/report/`: `report.md` and `report.csv` (one row per job: status, the swept
values, the final test metrics and, where the run scored it, the ground-truth part-attention
score), `<metric>_vs_<key>.png` plots, and `panel.png`: the same probe across jobs (input |
reconstruction | overall Grad-CAM map | top dimensions' maps, cut from each job's last Grad-CAM
grid). Jobs that failed (no metrics.json) or never ran (no folder) are listed as such, with the
last error line of the failed ones' logs."""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw, ImageFont

# final metrics worth a column, in this order, when any job has them
ORDER = ("recon", "kl", "ce", "bce", "jaccard_loss", "dice", "loss", "acc", "miou", "iou")
METRIC = re.compile(r"test/(" + "|".join(ORDER) + ")")
PANEL_CALLBACKS = ("gradcam", "seg_gradcam")


@dataclass
class Job:
    num: int
    folder: Path
    status: str = "ok"
    overrides: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""


def _overrides(path: Path) -> dict[str, str]:
    items = yaml.safe_load(path.read_text()) or []
    return dict(item.split("=", 1) for item in items if "=" in item and not item.startswith("hydra."))


def planned_jobs(sweep: Path) -> list[dict[str, str]] | int | None:
    """What the sweep asked for, from `<sweep>/multirun.yaml`: with Hydra's basic sweeper the
    swept values of every job, in job order (the product of the comma lists, as it runs them);
    with Optuna only the number of trials; None when it cannot tell."""
    path = sweep / "multirun.yaml"
    if not path.is_file():
        return None
    cfg = yaml.safe_load(path.read_text()) or {}
    hydra = cfg.get("hydra", {})
    sweeper = hydra.get("sweeper", {}) or {}
    if "n_trials" in sweeper:
        return int(sweeper["n_trials"])
    from hydra.core.override_parser.overrides_parser import OverridesParser

    swept = [
        (o.get_key_element(), list(o.sweep_string_iterator()))
        for o in OverridesParser.create().parse_overrides(hydra.get("overrides", {}).get("task", []))
        if o.is_sweep_override()
    ]
    keys = [k for k, _ in swept]
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*[v for _, v in swept])]


def _last_error(folder: Path) -> str:
    for log in sorted(folder.glob("*.log")):
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
        errors = [line for line in lines if re.search(r"error|exception|traceback", line, re.I)]
        if errors or lines:
            return (errors or lines)[-1][:200]
    return "no log"


def part_attention_score(folder: Path) -> float | None:
    """Mean AUROC with which each scored dimension's attention map ranks the pixels of the part
    its sweep acts on most densely (0.5 = chance); None without scores."""
    path = folder / "part_attention.json"
    if not path.is_file():
        return None
    rows = json.loads(path.read_text()).get("dimensions", [])
    values = [r["attention_auroc"] for r in rows if np.isfinite(r.get("attention_auroc") or np.nan)]
    return float(np.mean(values)) if values else None


def collect(sweep: Path) -> list[Job]:
    if not sweep.is_dir():
        raise SystemExit(f"src.report: no sweep folder at {sweep}")
    folders = {int(p.name): p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()}
    planned = planned_jobs(sweep)
    expected = len(planned) if isinstance(planned, list) else planned
    count = max([*folders, -1]) + 1 if expected is None else max(expected, max([*folders, -1]) + 1)
    if count == 0:
        raise SystemExit(f"src.report: {sweep} holds no job folders (0/, 1/, ...) and no multirun.yaml")
    jobs = []
    for num in range(count):
        folder = folders.get(num, sweep / str(num))
        job = Job(num, folder)
        if not folder.is_dir():
            if isinstance(planned, list) and num < len(planned):
                job.overrides = dict(planned[num])
            job.status = "missing"
            job.error = "no job folder: the job never started (or was deleted)"
        else:
            if (folder / ".hydra" / "overrides.yaml").is_file():
                job.overrides = _overrides(folder / ".hydra" / "overrides.yaml")
            metrics = folder / "metrics.json"
            if metrics.is_file():
                raw = json.loads(metrics.read_text())
                job.metrics = {k: float(v) for k, v in raw.items() if isinstance(v, int | float)}
                score = part_attention_score(folder)
                if score is not None:
                    job.metrics["part_attention"] = score
            else:
                job.status = "failed"
                job.error = _last_error(folder)
        jobs.append(job)
    return jobs


def swept_keys(jobs: list[Job]) -> list[str]:
    """Override keys whose values differ between jobs (the swept ones), in first-seen order."""
    keys = list(dict.fromkeys(k for job in jobs for k in job.overrides))
    return [k for k in keys if len({job.overrides.get(k) for job in jobs if job.status != "missing"}) > 1] or keys


def metric_columns(jobs: list[Job]) -> list[str]:
    present = {k for job in jobs for k in job.metrics}
    ordered = sorted((k for k in present if METRIC.fullmatch(k)), key=lambda k: ORDER.index(k.split("/")[1]))
    return ordered + (["part_attention"] if "part_attention" in present else [])


def _fmt(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.4g}"


def write_tables(jobs: list[Job], keys: list[str], metrics: list[str], out: Path) -> str:
    columns = ["job", "status", *keys, *metrics, "error"]
    rows = [
        [
            str(j.num),
            j.status,
            *[j.overrides.get(k, "") for k in keys],
            *[_fmt(j.metrics.get(m)) for m in metrics],
            j.error,
        ]
        for j in jobs
    ]
    with open(out / "report.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    bad = [j for j in jobs if j.status != "ok"]
    notes = [f"- job {j.num} {j.status}: {j.error}" for j in bad]
    text = "\n".join(lines) + ("\n\n" + "\n".join(notes) if notes else "") + "\n"
    (out / "report.md").write_text(text)
    return text


def _number(value: str) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def write_plots(jobs: list[Job], keys: list[str], metrics: list[str], out: Path) -> list[Path]:
    """For each numeric swept key and metric: the metric against the key's value, one line per
    combination of the other swept keys."""
    from src.viz.plots import figure_to_array, plt

    done = [j for j in jobs if j.status == "ok"]
    paths = []
    for key in keys:
        if not done or any(_number(j.overrides.get(key)) is None for j in done):
            continue
        others = [k for k in keys if k != key]
        for metric in metrics:
            fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=100)
            groups = itertools.groupby(
                sorted(done, key=lambda j: [j.overrides.get(k, "") for k in others]),
                key=lambda j: tuple(j.overrides.get(k, "") for k in others),
            )
            for group, members in groups:
                pts = sorted((_number(j.overrides[key]), j.metrics.get(metric, math.nan)) for j in members)
                label = ", ".join(f"{k}={v}" for k, v in zip(others, group, strict=True)) or None
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
            ax.set_xlabel(key)
            ax.set_ylabel(metric)
            if len({_number(j.overrides[key]) for j in done}) > 2 and min(_number(j.overrides[key]) for j in done) > 0:
                ax.set_xscale("log")
            if others:
                ax.legend(fontsize=6)
            path = out / f"{metric.replace('/', '_')}_vs_{key.split('.')[-1]}.png"
            Image.fromarray(figure_to_array(fig)).save(path)
            paths.append(path)
    return paths


def _first_row(folder: Path) -> np.ndarray | None:
    """Row 0 (the first probe) of the job's last Grad-CAM grid, or None."""
    cfg_path = folder / ".hydra" / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text()) if cfg_path.is_file() else {}
    for name in PANEL_CALLBACKS:
        epochs = sorted((folder / "explanations" / name).glob("epoch_*/maps.png"))
        if not epochs:
            continue
        grid = np.asarray(Image.open(epochs[-1]).convert("RGB"))
        probes = int(((cfg.get("explain") or {}).get(name) or {}).get("num_probes", 0) or 0)
        if probes <= 0 or (grid.shape[0] - 2) % probes:
            continue
        tile = (grid.shape[0] - 2) // probes - 2  # image_grid: 2 px padding around every tile
        return grid[: tile + 4]
    return None


def write_panel(jobs: list[Job], keys: list[str], out: Path) -> Path | None:
    rows = [(j, row) for j in jobs if j.status == "ok" and (row := _first_row(j.folder)) is not None]
    if not rows:
        return None
    font = ImageFont.load_default()
    margin = 12 + max(int(font.getlength(", ".join(f"{k}={j.overrides.get(k)}" for k in keys))) for j, _ in rows)
    width = margin + max(r.shape[1] for _, r in rows)
    canvas = Image.new("RGB", (width, sum(r.shape[0] for _, r in rows)), "white")
    draw, y = ImageDraw.Draw(canvas), 0
    for job, row in rows:
        canvas.paste(Image.fromarray(row), (margin, y))
        text = ", ".join(f"{k}={job.overrides.get(k)}" for k in keys) or f"job {job.num}"
        draw.text((4, y + row.shape[0] // 2 - 5), text, fill="black", font=font)
        y += row.shape[0]
    path = out / "panel.png"
    canvas.save(path)
    return path


def report(sweep: Path, out: Path | None = None) -> dict:
    sweep = Path(sweep)
    out = Path(out) if out else sweep / "report"
    out.mkdir(parents=True, exist_ok=True)
    jobs = collect(sweep)
    keys, metrics = swept_keys(jobs), metric_columns(jobs)
    text = write_tables(jobs, keys, metrics, out)
    plots = write_plots(jobs, keys, metrics, out)
    panel = write_panel(jobs, keys, out)
    return {"jobs": jobs, "table": text, "plots": plots, "panel": panel, "out": out}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, help="a multirun folder: outputs/multiruns/<task>/<time>")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default <sweep>/report)")
    args = parser.parse_args(argv)
    result = report(args.sweep, args.out)
    print(result["table"])
    ok = sum(j.status == "ok" for j in result["jobs"])
    print(f"{ok}/{len(result['jobs'])} jobs finished; report in {result['out']}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
