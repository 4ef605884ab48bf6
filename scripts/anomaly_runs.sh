#!/usr/bin/env bash
# The runs behind RESULTS.md "Anomaly localisation and detection" (2-core CPU: about 30 minutes): the
# face VAE on synthetic faces without glasses and hats (3 training seeds), and the one-class
# FashionMNIST VAE per class.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=outputs/quality
run() { local name=$1; shift; echo "== $name: $*"; "$PY" -m src.train "$@" logger=csv explain=none test=false \
  trainer.enable_progress_bar=false "hydra.run.dir=$OUT/$name" > "$OUT/$name.log" 2>&1 \
  || { echo "FAILED $name (see $OUT/$name.log)"; return 1; }; }
mkdir -p $OUT
run synthfaces_anomaly experiment=synthfaces_anomaly trainer.max_epochs=8
run synthfaces_anomaly_seed1 experiment=synthfaces_anomaly trainer.max_epochs=8 seed=1
run synthfaces_anomaly_seed2 experiment=synthfaces_anomaly trainer.max_epochs=8 seed=2
"$PY" scripts/anomaly_results.py $OUT/synthfaces_anomaly $OUT/synthfaces_anomaly_seed1 $OUT/synthfaces_anomaly_seed2 \
  --out $OUT/anomaly_synthfaces.json | tee $OUT/anomaly_synthfaces.md
for k in 0 1 2 3 4 5 6 7 8 9; do run fashion_anomaly_$k experiment=fashion_anomaly "data.normal.classes=[$k]"; done
"$PY" scripts/anomaly_results.py $(for k in 0 1 2 3 4 5 6 7 8 9; do echo $OUT/fashion_anomaly_$k; done) --n-test 1000 \
  --maps attention deviation latent_smoothgrad recon_error recon_ssim --out $OUT/anomaly_fashion.json \
  | tee $OUT/anomaly_fashion.md
