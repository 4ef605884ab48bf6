#!/usr/bin/env bash
# The training runs behind the README's results section (CPU: about an hour on 2 cores).
# Each run's folder is outputs/quality/<name>; summarise with: python scripts/quality_table.py
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=outputs/quality
run() { local name=$1; shift; echo "== $name: $*"; "$PY" -m src.train "$@" logger=csv trainer.enable_progress_bar=false \
  "hydra.run.dir=$OUT/$name" > "$OUT/$name.log" 2>&1 || { echo "FAILED $name (see $OUT/$name.log)"; return 1; }; }
mkdir -p $OUT
run fashion_classifier experiment=fashion_classifier
run synthfaces_attributes_classifier experiment=synthfaces_attributes_classifier
run synthfaces_cvae experiment=synthfaces_cvae
# segmentation: one set of 5,000 faces rendered at 256 px, read at each preset's size (same faces, same split)
SEG="data.count=5000 data.generate_size=256 data.batch_size=64"
run seg_vae64 experiment=synthfaces_seg_vae $SEG data.image_size=64 model/arch=seg_vae64 trainer.max_epochs=20
run unet64 experiment=synthfaces_unet $SEG data.image_size=64 trainer.max_epochs=10
run seg_vae128 experiment=synthfaces_seg_vae $SEG data.image_size=128 model/arch=seg_vae128 trainer.max_epochs=10
run seg_vae256 experiment=synthfaces_seg_vae $SEG data.image_size=256 model/arch=seg_vae256 trainer.max_epochs=4
echo "== done"
