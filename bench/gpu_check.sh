#!/usr/bin/env bash
# The GPU check of docs/training.md, in one run: the model step (CObL vs the frozen UNet, with and without
# gradient checkpointing), the real loop's steady-state step with and without the prepared-example cache,
# and `cobl infer` per sampler setting (wall time, peak memory); one table at the end.
#
#   bash bench/gpu_check.sh                  # a GPU: SD 2.1-base shapes, random weights, 512², K = 6, batch 2
#   bash bench/gpu_check.sh --cpu            # the same chain at a small size on the CPU (tiny SD-like folder)
#   bash bench/gpu_check.sh --long-demo N    # also: the demo's tiny model for N steps with val points (needs
#                                            #   the demo's shards in DEMO_DATA, default demo_data/shards)
#
# Nothing here renders (no bpy on the GPU machine): training shards are synthetic (tests/shardmaker.py).
# Missing pure-Python packages (diffusers, webdataset, braceexpand, importlib_metadata, zipp) are installed
# from the ignored .whl/ folder into /tmp/site (see docs/training.md for the download command). Runs in
# <= 8 minutes on one H200 without --long-demo. WORK (default /tmp/gpu_check) holds everything it writes.
set -uo pipefail  # a failed part is reported in the table; the others still run
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
MODE=gpu
LONG=0
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) MODE=cpu; shift ;;
    --long-demo) LONG=$2; shift 2 ;;
    *) echo "gpu_check.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
WORK=${WORK:-/tmp/gpu_check}
DEMO_DATA=${DEMO_DATA:-$ROOT/demo_data/shards}
PY=${PY:-python3}
rm -rf "$WORK"; mkdir -p "$WORK"
T0=$(date +%s)
stage() { echo "[gpu_check +$(( $(date +%s) - T0 ))s] $*"; }

# --- packages the GPU machine lacks, from .whl/ (a no-op where they are installed)
if ! $PY -c "import diffusers, webdataset, braceexpand" 2>/dev/null; then
  stage "installing .whl/*.whl into /tmp/site"
  $PY -m pip install -q --no-deps --no-index --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH="$ROOT:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU')"

if [ "$MODE" = gpu ]; then
  SHAPE=real; RES=512; K=6; BATCH=2; SCENES=48; STEPS=20; WARM=5; SAMPLING=20
  PREC=(--mixed-precision bf16); TRAIN_BENCH=(--bf16); WORKERS=6
else
  SHAPE=tiny; RES=64; K=3; BATCH=2; SCENES=16; STEPS=10; WARM=5; SAMPLING=2
  PREC=(--mixed-precision no); TRAIN_BENCH=(); WORKERS=1
fi

stage "SD-shaped folder ($SHAPE) and synthetic ${RES}² shards"
$PY bench/sd_folder.py --out "$WORK/sd" --shape $SHAPE || exit 1
$PY - "$WORK" "$RES" "$K" "$SCENES" <<'EOF'
# two shards of synthetic scenes, one photo with its depth (metres) for `cobl infer`, and the sd config
# with the depth adapter, as the authors' model and bench_train.py have it
import sys
from pathlib import Path
import numpy as np
from PIL import Image
from cobl.configs import sd_config
from tests.shardmaker import make_scene, scene_depth, write_shard
work, res, k, scenes = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for i in range(2):
    write_shard(work / "shards" / f"train-{i:06d}.tar", scenes // 2, size=res, max_objects=min(k, 4),
                max_layers=k, seed=i)
scene = make_scene(np.random.default_rng(7), res, 3)
Image.fromarray((scene["photo"].transpose(1, 2, 0) * 255).round().astype(np.uint8)).save(work / "photo.png")
np.save(work / "photo.npy", scene_depth(scene["ids"], 3))
(work / "sd.json").write_text(sd_config(k, res).replace(depth_condition=True).to_json())
EOF
[ -f "$WORK/sd.json" ] || exit 1
DATA="$WORK/shards/train-{000000..000001}.tar"

stage "model step: CObL vs the frozen UNet over the same K+1 slots"
if [ "$MODE" = gpu ]; then
  $PY bench/bench_train.py --resolution $RES --num-objects $K --batch-size $BATCH "${TRAIN_BENCH[@]}" \
      --gradient-checkpointing --optimizer --steps 5 | tee "$WORK/bench_train_ckpt.txt"
  $PY bench/bench_train.py --resolution $RES --num-objects $K --batch-size $BATCH "${TRAIN_BENCH[@]}" \
      --optimizer --steps 5 --variants cobl | tee "$WORK/bench_train_nockpt.txt"
else  # the real UNet takes minutes per step on a CPU: the tiny SD-like folder's, through --pretrained
  $PY bench/bench_train.py --pretrained "$WORK/sd" --resolution $RES --num-objects $K --batch-size $BATCH \
      --gradient-checkpointing --optimizer --steps 1 | tee "$WORK/bench_train_ckpt.txt"
fi

stage "the loop: model step vs steady-state step, with and without the cache"
$PY bench/bench_loop.py --config "$WORK/sd.json" --pretrained "$WORK/sd" --data "$DATA" --resolution $RES --num-objects $K \
    --batch-size $BATCH "${PREC[@]}" --gradient-checkpointing --num-workers $WORKERS --cache disk \
    --steps $STEPS --warmup $WARM --window 5 --reps 1 --keep "$WORK/loop" | tee "$WORK/bench_loop.txt"

stage "cobl infer per sampler setting (model: the loop's cached run)"
$PY bench/bench_cli_infer.py --model "$WORK/loop/run-cache-0" --image "$WORK/photo.png" \
    --depth "$WORK/photo.npy" \
    --setting "authors=--preset authors" \
    --setting "x0=--sampling-steps $SAMPLING --guidance-mode x0" \
    --setting "both=--sampling-steps $SAMPLING --guidance-mode both" | tee "$WORK/bench_infer.txt"

if [ "$LONG" -gt 0 ]; then
  stage "the demo's tiny model for $LONG steps with val points (issue 24's compute curve)"
  $PY -c "import sys; from pathlib import Path; from bench.bench_loop import demo_model_config; \
demo_model_config(Path(sys.argv[1]))" "$WORK"
  EVERY=$(( LONG / 10 > 1 ? LONG / 10 : 1 ))
  # the demo's `cobl train` options (app/demo.py), more steps; LONG_ARGS adds or overrides flags
  $PY -c "import sys; from app.cli import main; sys.exit(main())" train \
      --data "$DEMO_DATA/train-*.tar" --val-data "$DEMO_DATA/val-*.tar" --out "$WORK/demo_long" \
      --config "$WORK/model_config.json" --num-objects 3 --object-weight 10.0 --resolution 64 \
      --batch-size 8 --lr 0.001 --seed 0 --slot-matching --num-workers 1 --max-steps "$LONG" \
      --checkpoint-every "$EVERY" --val-every "$EVERY" --val-scenes 48 --val-sampling-steps 20 \
      --val-min-area 0.02 --validate-every 0 --no-progress ${LONG_ARGS:-}
fi

stage "done"
$PY bench/gpu_check_table.py "$WORK" "$MODE" $(( $(date +%s) - T0 ))
