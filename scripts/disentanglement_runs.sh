#!/usr/bin/env bash
# The runs behind RESULTS.md "Disentanglement" (2-core CPU: about 1 hour): four dSprites VAEs
# (beta-VAE beta 1 and 4, FactorVAE, AD-FactorVAE), the synthfaces VAE with the AD loss (the one
# without is scripts/quality_runs.sh's synthfaces_vae recipe), then the scores of each.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=outputs/quality
EPOCHS=${EPOCHS:-10}
run() { local name=$1; shift; echo "== $name: $*"; "$PY" -m src.train "$@" logger=csv explain=none test=false \
  trainer.enable_progress_bar=false "hydra.run.dir=$OUT/$name" > "$OUT/$name.log" 2>&1 \
  || { echo "FAILED $name (see $OUT/$name.log)"; return 1; }; }
mkdir -p $OUT
run dsprites_beta1 experiment=dsprites_vae trainer.max_epochs=$EPOCHS
run dsprites_beta4 experiment=dsprites_vae trainer.max_epochs=$EPOCHS model.loss.beta=4
run dsprites_factorvae experiment=dsprites_vae trainer.max_epochs=$EPOCHS model.loss.tc_weight=35
run dsprites_ad_factorvae experiment=dsprites_vae trainer.max_epochs=$EPOCHS model.loss.tc_weight=35 model.loss.ad_weight=40
"$PY" scripts/disentanglement_results.py $OUT/dsprites_beta1 $OUT/dsprites_beta4 $OUT/dsprites_factorvae \
  $OUT/dsprites_ad_factorvae --codes 3000 --votes 300 --out $OUT/disentanglement_dsprites.json | tee $OUT/disentanglement_dsprites.md
[ -f $OUT/synthfaces_vae/checkpoints/last.ckpt ] || run synthfaces_vae experiment=synthfaces_vae trainer.max_epochs=6
run synthfaces_vae_ad experiment=synthfaces_vae trainer.max_epochs=6 model.loss.ad_weight=40
# synthfaces renders each fixed-factor batch on the fly (~1 s per 64 faces): fewer votes, no beta-VAE score
"$PY" scripts/disentanglement_results.py $OUT/synthfaces_vae $OUT/synthfaces_vae_ad --votes 100 \
  --metrics mig sap dci factor_vae --out $OUT/disentanglement_synthfaces.json | tee $OUT/disentanglement_synthfaces.md
"$PY" scripts/latent_ground_truth.py $OUT/synthfaces_vae_ad/checkpoints/last.ckpt --out $OUT/gt_synthfaces_vae_ad.json \
  > $OUT/gt_synthfaces_vae_ad.md
