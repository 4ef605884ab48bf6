#!/usr/bin/env bash
# The training runs behind RESULTS.md (2-core CPU: about 1.5 hours).
# Each run's folder is outputs/quality/<name>; summarise with: python scripts/quality_table.py
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=outputs/quality
run() { local name=$1; shift; echo "== $name: $*"; "$PY" -m src.train "$@" logger=csv trainer.enable_progress_bar=false \
  "hydra.run.dir=$OUT/$name" > "$OUT/$name.log" 2>&1 || { echo "FAILED $name (see $OUT/$name.log)"; return 1; }; }
mkdir -p $OUT
run fashion_classifier experiment=fashion_classifier
# every attribution method's faithfulness (AOPC) and sanity check on it
"$PY" scripts/attribution_results.py "$(ls $OUT/fashion_classifier/checkpoints/epoch_*.ckpt | tail -1)" --n 100 \
  --out "$OUT/fashion_attribution.json" | tee "$OUT/fashion_attribution.md"
run synthfaces_attributes_classifier experiment=synthfaces_attributes_classifier model.blur_augment=0  # sharp-only judge
run synthfaces_attributes_classifier_blur experiment=synthfaces_attributes_classifier       # the default judge
"$PY" scripts/localization_results.py "$(ls $OUT/synthfaces_attributes_classifier_blur/checkpoints/epoch_*.ckpt | tail -1)" \
  --n 200 --out "$OUT/synthfaces_localization.json" | tee "$OUT/synthfaces_localization.md"
run synthfaces_cvae experiment=synthfaces_cvae model.loss.beta=1 model.condition_every_block=false  # the first try
run synthfaces_cvae_beta8 experiment=synthfaces_cvae model.condition_every_block=false  # [Panday2021] wiring, beta = 8
run synthfaces_cvae_blocks experiment=synthfaces_cvae                                  # the default: + c at every block
for name in synthfaces_cvae synthfaces_cvae_beta8 synthfaces_cvae_blocks; do
  for judge in synthfaces_attributes_classifier synthfaces_attributes_classifier_blur; do
    "$PY" scripts/cvae_attribute_control.py "$(ls $OUT/$name/checkpoints/epoch_*.ckpt | tail -1)" \
      "$(ls $OUT/$judge/checkpoints/epoch_*.ckpt | tail -1)" --n 1000 --out "$OUT/$name.$judge.control.json"
  done
done
# Grad-CAM of the latent dimensions against the true part masks
run synthfaces_vae experiment=synthfaces_vae trainer.max_epochs=5
"$PY" scripts/part_attention.py "$(ls $OUT/synthfaces_vae/checkpoints/epoch_*.ckpt | tail -1)" --n 256 --dims 16 \
  --layers encoder.blocks.3.conv encoder.blocks.2.conv encoder.blocks.1.conv --out "$OUT/synthfaces_vae.part_attention.json"
# segmentation: one set of 5,000 faces rendered at 256 px, read at each preset's size (same faces, same split)
SEG="data.count=5000 data.generate_size=256 data.batch_size=64"
run seg_vae64 experiment=synthfaces_seg_vae $SEG data.image_size=64 model/arch=seg_vae64 trainer.max_epochs=20
# epochs cut to what fits a CPU session for the larger seg VAE presets
run unet64 experiment=synthfaces_unet $SEG data.image_size=64 trainer.max_epochs=10
run seg_vae128 experiment=synthfaces_seg_vae $SEG data.image_size=128 model/arch=seg_vae128 trainer.max_epochs=5
run seg_vae256 experiment=synthfaces_seg_vae $SEG data.image_size=256 model/arch=seg_vae256 trainer.max_epochs=2
echo "== done"
