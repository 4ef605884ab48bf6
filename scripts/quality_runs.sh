#!/usr/bin/env bash
# The training runs behind the README's results section (2-core CPU: about 1.5 hours).
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
run synthfaces_cvae experiment=synthfaces_cvae model.loss.beta=1   # the first try: ignores most conditions
run synthfaces_cvae_beta8 experiment=synthfaces_cvae                 # the default, beta = 8
for name in synthfaces_cvae synthfaces_cvae_beta8; do
  "$PY" scripts/cvae_attribute_control.py "$(ls $OUT/$name/checkpoints/epoch_*.ckpt | tail -1)" \
    "$(ls $OUT/synthfaces_attributes_classifier/checkpoints/epoch_*.ckpt | tail -1)" --n 1000 --out "$OUT/$name.control.json"
done
# segmentation: one set of 5,000 faces rendered at 256 px, read at each preset's size (same faces, same split)
SEG="data.count=5000 data.generate_size=256 data.batch_size=64"
run seg_vae64 experiment=synthfaces_seg_vae $SEG data.image_size=64 model/arch=seg_vae64 trainer.max_epochs=20
# epochs cut to what fits a CPU session for the larger seg VAE presets
run unet64 experiment=synthfaces_unet $SEG data.image_size=64 trainer.max_epochs=10
run seg_vae128 experiment=synthfaces_seg_vae $SEG data.image_size=128 model/arch=seg_vae128 trainer.max_epochs=5
run seg_vae256 experiment=synthfaces_seg_vae $SEG data.image_size=256 model/arch=seg_vae256 trainer.max_epochs=2
echo "== done"
