#!/usr/bin/env bash
# The [PathMaskThesis] semantic morphing experiment, one command per dataset list:
#   scripts/reproduce_morph.sh                      # FashionMNIST and digits (real data on this machine)
#   DATASETS="mnist notmnist" MNIST_ROOT=DIR NOTMNIST_ROOT=DIR scripts/reproduce_morph.sh
# For each dataset: train <d>_classifier and <d>_vae (the [PathMaskThesis] ConvVAE, 100 latents), then
# python -m src.explain experiment=<d>_path_mask on their best checkpoints: 100 test images
# (seed 123), morphing error rate, entropy/gradient Pearson correlation, seconds per sample,
# path-mask panels for 8. Runs land in outputs/quality/<name>; a table is printed at the end.
# Extra overrides for every command: EXTRA="trainer=gpu"; VAE epochs: VAE_EPOCHS=200 (the [PathMaskThesis]).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-outputs/quality}
DATASETS=${DATASETS:-"fashion digits"}
EXTRA=${EXTRA:-}
EXPLAIN_EXTRA=${EXPLAIN_EXTRA:-}  # e.g. "explain.morph_path.num_masks=2"
TRAIN_EXTRA=${TRAIN_EXTRA:-}      # e.g. "explain=none" (no panels while training: faster on a CPU)
mkdir -p "$OUT"
best() { ls "$OUT/$1"/checkpoints/epoch_*.ckpt | tail -1; }
run() {  # run NAME MODULE OVERRIDES...
  local name=$1 module=$2; shift 2
  echo "== $name: python -m $module $*"
  # shellcheck disable=SC2086
  # shellcheck disable=SC2086
  "$PY" -m "$module" "$@" $EXTRA logger=csv trainer.enable_progress_bar=false "hydra.run.dir=$OUT/$name" \
    > "$OUT/$name.log" 2>&1 || { echo "FAILED $name (see $OUT/$name.log)"; return 1; }
}
for d in $DATASETS; do
  root=()
  case $d in
    mnist) root=("data.root=${MNIST_ROOT:?set MNIST_ROOT to the folder with the MNIST IDX files}") ;;
    notmnist) root=("data.root=${NOTMNIST_ROOT:?set NOTMNIST_ROOT to the notMNIST_small folder}") ;;
  esac
  epochs=()
  [ -n "${VAE_EPOCHS:-}" ] && epochs=("trainer.max_epochs=$VAE_EPOCHS")
  # shellcheck disable=SC2086
  run "${d}_classifier" src.train "experiment=${d}_classifier" "${root[@]}" $TRAIN_EXTRA
  # shellcheck disable=SC2086
  run "${d}_vae" src.train "experiment=${d}_vae" "${root[@]}" "${epochs[@]}" $TRAIN_EXTRA
  run "${d}_path_mask" src.explain "experiment=${d}_path_mask" "${root[@]}" \
    "classifier_ckpt=$(best "${d}_classifier")" "vae_ckpt=$(best "${d}_vae")" $EXPLAIN_EXTRA
done
"$PY" - "$OUT" $DATASETS <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print("| data | classifier test acc | error rate | converged | mean steps | s / sample | Pearson pooled | Pearson mean |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for d in sys.argv[2:]:
    acc = json.loads((out / f"{d}_classifier" / "metrics.json").read_text()).get("test/acc", float("nan"))
    s = json.loads((out / f"{d}_path_mask" / "metrics.json").read_text())["morph_path"]
    print(f"| {d} | {acc:.4f} | {s['error_rate']:.2f} | {s['converged_rate']:.2f} | {s['mean_steps']:.0f} | "
          f"{s['seconds_per_sample']:.2f} | {s['pearson_entropy_gradient_pooled']:.3f} | "
          f"{s['pearson_entropy_gradient_mean']:.3f} |")
PYEOF
