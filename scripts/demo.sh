#!/usr/bin/env bash
# The README's first command (`make demo`): the whole omama toolchain on synthetic data, on
# a CPU, without downloaded weights, in a few minutes:
#   synthetic Ego-Exo4D takes -> processed root -> pairs -> candidates -> feature cache
#   (small ViT-S/14 backbone, seeded random weights) -> a small matcher trained on it ->
#   ONNX export of that matcher and backbone -> `omama-run video` on ONNX Runtime ->
#   official metrics -> an ego2exo matcher started from that one (--init), and its export ->
#   `omama-run dataset` of both directions -> `omama submit` (the challenge's two-direction
#   submission.json, checked) and `omama eval` of it -> `omama bench` (PyTorch vs ONNX Runtime).
# SYNTHETIC DATA AND RANDOM-INITIALISED BACKBONES: the numbers show that the toolchain works
# and how fast it is, not O-MaMa's accuracy on Ego-Exo4D (see the README for real weights).
set -euo pipefail
OUT=${1:-demo_out}
DIR=exo2ego
BACKBONE=dinov2_vits14_reg
EPOCHS=${DEMO_EPOCHS:-10}
# The ego2exo half of the submission only has to exist and pass the checks: a short run.
EGO2EXO_EPOCHS=${DEMO_EGO2EXO_EPOCHS:-2}
export YOLO_OFFLINE=1
START=$(date +%s)

step() { printf '\n== [%4ss] %s\n' "$(($(date +%s) - START))" "$*"; }

step "1/12 synthetic takes (small videos, Ego-Exo4D layout)"
omama data synth --out "$OUT/raw" --num-takes 12 --small --seed 0

step "2/12 prepare: decode masks, extract annotated frames"
for split in train val test; do
  rel="$OUT/raw/annotations/relations_$split.json"
  [ -f "$rel" ] && omama data prepare --relations "$rel" --takes "$OUT/raw/takes" \
    --out "$OUT/root" --workers 2
done

step "3/12 pairs and candidates of both directions (GT masks of all objects stand in for FastSAM)"
for direction in exo2ego ego2exo; do
  omama data pairs --root "$OUT/root" --direction "$direction" --seed 42
  for split in train val test; do
    omama data masks --root "$OUT/root" --split "$split" --direction "$direction" \
      --from-annotations --no-progress
  done
done

step "4/12 feature cache of both directions ($BACKBONE, seeded random weights, once per image)"
omama features --root "$OUT/root" --direction all --backbone "$BACKBONE" --random-init \
  --out "$OUT/features" --no-progress

step "5/12 train a small matcher on the cached features ($EPOCHS epochs, CPU)"
omama train --root "$OUT/root" --cache "$OUT/features" --out "$OUT/run" --direction "$DIR" \
  --epochs "$EPOCHS" --batch-size 8 --num-candidates 8 --lr 1e-4 --workers 0 --gap-pairs 32 \
  --early-stop-patience 4 --eval-workers 1 --validate-first --no-progress

step "6/12 export the trained matcher and the cache's backbone to ONNX (verified)"
omama export --matcher "$OUT/run/best.safetensors" \
  --backbone-weights "$OUT/features/backbone.safetensors" --no-fastsam-export \
  --parity-sets 50 --out "$OUT/artifacts"

# The test take: its first exo camera is the source video, the Aria video the destination.
TAKE=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['test'][0])" \
  "$OUT/root/split.json")
ANNOTATION="$OUT/root/processed/$TAKE/annotation.json"
read -r TAKE_NAME SRC_CAM DST_CAM < <(python -c "
import json, sys
ann = json.load(open(sys.argv[1]))
cams = sorted({c for obj in ann['masks'].values() for c in obj})
print(ann['take_name'], [c for c in cams if not c.startswith('aria')][0],
      [c for c in cams if c.startswith('aria')][0])" "$ANNOTATION")
VIDEOS="$OUT/raw/takes/$TAKE_NAME/frame_aligned_videos"
CANDIDATES="$OUT/root/Masks_TEST_EXO2EGO/$TAKE/$DST_CAM"

step "7/12 omama-run verify (golden inputs vs the export's torch outputs), then omama-run video on ONNX Runtime: $SRC_CAM -> $DST_CAM of take $TAKE_NAME"
omama-run verify "$OUT/artifacts" --backend onnxruntime --device cpu --precision fp32
omama-run video "$VIDEOS/$SRC_CAM.mp4" "$VIDEOS/$DST_CAM.mp4" --query "$ANNOTATION" \
  --src-cam "$SRC_CAM" --candidates "$CANDIDATES" --artifacts "$OUT/artifacts" \
  --backend onnxruntime --overlay --out "$OUT/video"

step "8/12 official metrics of the video run (and the chance level, for scale)"
omama data gt --root "$OUT/root" --split test --direction "$DIR" --take "$TAKE" \
  --cam "$SRC_CAM" --out "$OUT/gt_video.json"
omama eval --gt "$OUT/gt_video.json" --pred "$OUT/video/results.json" --direction "$DIR" \
  --out "$OUT/metrics_video.json" --gallery "$OUT/gallery" --root "$OUT/root"
omama data gt --root "$OUT/root" --split test --direction "$DIR" --out "$OUT/gt_test.json"
omama data baseline --root "$OUT/root" --split test --direction "$DIR" --kind random \
  --out "$OUT/pred_random.json"
omama eval --gt "$OUT/gt_test.json" --pred "$OUT/pred_random.json" --direction "$DIR" \
  --out "$OUT/metrics_random.json" > "$OUT/metrics_random.txt"
python - "$OUT/metrics_video.json" "$OUT/metrics_random.json" <<'PY'
import json, sys
video, chance = (json.load(open(p)) for p in sys.argv[1:3])
iou = [report["aggregated_metrics"]["iou"] for report in (video, chance)]
print(f"IoU of the trained matcher on the video: {iou[0]:.3f}; "
      f"a random candidate on the test split: {iou[1]:.3f}")
PY

# O-MaMa released exo2ego weights only: ego2exo starts from the exo2ego matcher (--init swaps
# its two view tables), as a researcher starts from the released checkpoint.
step "9/12 ego2exo: a matcher started from the exo2ego one ($EGO2EXO_EPOCHS epochs, same feature cache) and its export"
omama train --root "$OUT/root" --cache "$OUT/features" --out "$OUT/run_ego2exo" \
  --direction ego2exo --init "$OUT/run/best.safetensors" --epochs "$EGO2EXO_EPOCHS" \
  --batch-size 8 --num-candidates 8 --lr 1e-4 --workers 0 --gap-pairs 32 --eval-workers 1 \
  --no-progress
omama export --matcher "$OUT/run_ego2exo/best.safetensors" \
  --backbone-weights "$OUT/features/backbone.safetensors" --no-fastsam-export \
  --parity-sets 20 --out "$OUT/artifacts_ego2exo"

step "10/12 the challenge submission: omama-run dataset of the test split in both directions (masks at the official evaluator's size), omama submit, omama eval"
for direction in exo2ego ego2exo; do
  artifacts="$OUT/artifacts"
  [ "$direction" = ego2exo ] && artifacts="$OUT/artifacts_ego2exo"
  omama-run dataset "$OUT/root" --split test --direction "$direction" --artifacts "$artifacts" \
    --candidates "$OUT/root/Masks_TEST_${direction^^}" --backend onnxruntime --device cpu \
    --out "$OUT/dataset_$direction" > "$OUT/dataset_$direction.txt"
  omama data gt --root "$OUT/root" --split test --direction "$direction" \
    --out "$OUT/gt_test_$direction.json"
done
omama submit --exo2ego "$OUT/dataset_exo2ego/results.json" \
  --ego2exo "$OUT/dataset_ego2exo/results.json" --gt-exo2ego "$OUT/gt_test_exo2ego.json" \
  --gt-ego2exo "$OUT/gt_test_ego2exo.json" --out "$OUT/submission.json"
omama eval --pred "$OUT/submission.json" --gt-exo2ego "$OUT/gt_test_exo2ego.json" \
  --gt-ego2exo "$OUT/gt_test_ego2exo.json" --protocol egoexo4d \
  --out "$OUT/metrics_submission.json" > "$OUT/metrics_submission.txt"
python - "$OUT/metrics_submission.json" <<'PY'
import json, sys
for direction, report in json.load(open(sys.argv[1])).items():
    print(f"{direction}: IoU {report['aggregated_metrics']['iou']:.3f} on the test split "
          "(official evaluator's protocol)")
PY

step "11/12 omama bench: PyTorch vs ONNX Runtime (TensorRT: a row saying why not), and the O-MaMa reference shape"
omama bench --artifacts "$OUT/artifacts" --backends torch,onnxruntime,tensorrt --precisions fp32 \
  --device cpu --num-pairs 3 --objects-per-frame 4 --repeats 2 --warmup 1 \
  --weights-dir "$OUT/run" --weights-dir "$OUT/features" --score-root "$OUT/root" --score-frames 6 \
  --out "$OUT/bench"

step "12/12 done in $(($(date +%s) - START)) s"
cat <<EOT
Synthetic data, random-initialised backbone: the toolchain at work, not O-MaMa's accuracy.
  overlay video:    $OUT/video/overlay.mp4
  results JSON:     $OUT/video/results.json  (Ego-Exo4D format; summary: $OUT/video/summary.json)
  metrics:          $OUT/metrics_video.json  (gallery: $OUT/gallery/index.html)
  trained matcher:  $OUT/run/best.safetensors  (metrics per epoch: $OUT/run/metrics.csv)
  artifacts:        $OUT/artifacts/manifest.json  (ego2exo: $OUT/artifacts_ego2exo/manifest.json)
  submission.json:  $OUT/submission.json  (both directions of the test split, checked by
                    omama submit; metrics: $OUT/metrics_submission.json)
  benchmark report: $OUT/bench/report.md  ($OUT/bench/report.json, $OUT/bench/latency.png)
EOT
