#!/usr/bin/env bash
# The README's first command (`make demo`): synthetic Ego-Exo4D takes -> processed root ->
# pairs -> candidates -> evaluation of the chance level and the candidate ceiling.
# Synthetic data only; no weights are needed.
set -euo pipefail
OUT=${1:-demo_out}
DIR=exo2ego
export YOLO_OFFLINE=1

step() { printf '\n== %s\n' "$*"; }

step "1/6 synthetic takes (small videos, Ego-Exo4D layout)"
omama data synth --out "$OUT/raw" --takes 3 --small --seed 0

step "2/6 prepare: decode masks, extract annotated frames"
for split in train val test; do
  rel="$OUT/raw/annotations/relations_$split.json"
  [ -f "$rel" ] && omama data prepare --relations "$rel" --takes "$OUT/raw/takes" --out "$OUT/root" --workers 2
done

step "3/6 pairs ($DIR)"
omama data pairs --root "$OUT/root" --direction "$DIR" --seed 42

step "4/6 candidates for the test split (GT masks of all objects as stand-ins for FastSAM)"
omama data masks --root "$OUT/root" --split test --direction "$DIR" --from-annotations

step "5/6 evaluation GT and the two bounds of a matcher"
omama data gt --root "$OUT/root" --split test --direction "$DIR" --out "$OUT/gt_test.json"
for kind in random oracle; do
  omama data baseline --root "$OUT/root" --split test --direction "$DIR" --kind "$kind" \
    --out "$OUT/pred_$kind.json"
done

step "6/6 official metrics"
for kind in random oracle; do
  echo "-- $kind"
  omama eval --gt "$OUT/gt_test.json" --pred "$OUT/pred_$kind.json" --direction "$DIR" \
    --json "$OUT/metrics_$kind.json"
done
omama eval --gt "$OUT/gt_test.json" --pred "$OUT/pred_random.json" --direction "$DIR" \
  --gallery "$OUT/gallery" --root "$OUT/root" > /dev/null

printf '\nDone. Results in %s:\n' "$OUT"
printf '  metrics:     %s\n' "$OUT/metrics_random.json" "$OUT/metrics_oracle.json"
printf '  predictions: %s\n' "$OUT/pred_random.json" "$OUT/pred_oracle.json"
printf '  gallery:     %s\n' "$OUT/gallery/index.html"
