#!/usr/bin/env bash
# GPU check of the whole training and inference path, from a fresh checkout with a Python environment.
#
#   benchmarks/gpu_check.sh [--out DIR] [--steps N] [--python PY] [--skip_tests] [--compile]
#   benchmarks/gpu_check.sh --dry-run        # every step tiny on the CPU (checks the script and the flags);
#                                            # --device cpu is the same, --device cuda the default
#
# Steps (each logged to DIR/logs/<step>.log; a failed step is reported and the others still run):
#   tests       the test suite ("not slow") with CUDA visible (the GPU-only tests run)
#   cohort      a phantom cohort (data/make_phantoms.py), centroids and straightened crops
#   classifier  a small fracture classifier, then Grad-CAM++ maps (s/vertebra)
#   train       N steps on one GPU, then a resume for N/10 more (s/step from the two wall times)
#   amp_bf16    the same with --amp --amp_dtype bf16 (no loss scaling)
#   amp_fp16    the same with --amp --amp_dtype fp16 (one GradScaler per network)
#   gpu1        --gpu_ids 1 must not open a context on GPU 0 (2 GPUs)
#   ddp         torchrun --nproc_per_node 2 train + resume, and a WGAN-GP + batch-norm critic run (2 GPUs)
#   synthesis   eval_3d_sagittal_twostage.py on the cohort (s/vertebra), and with torchrun on 2 GPUs
#   compile     with --compile: train_compile (train + resume with torch.compile; both runs compile, so s/step
#               leaves out about the compilation time) and synthesis_compile (s/vertebra with the compilation,
#               then a second run over the same vertebrae with the compile cache warm)
# The last lines are a table: step, status, seconds, s/step or s/vertebra. Exit status 1 when a step failed.
# --dry-run uses --gpu_ids -1, 3 training steps, the fp16 step skipped (GPU only) and 2 Gloo ranks for
# the torchrun steps. Wall times include process start-up; s/step subtracts it (see `per_step`).
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${TMPDIR:-/tmp}/healthivert_gpu_check"
STEPS=200
PYTHON="${PYTHON:-python}"
DRY_RUN=0
SKIP_TESTS=0
COMPILE=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --steps) STEPS="$2"; shift 2 ;;
    --python) PYTHON="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --device) [[ "${2:-}" == cpu ]] && DRY_RUN=1; shift 2 ;;
    --skip_tests) SKIP_TESTS=1; shift ;;
    --compile) COMPILE=1; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

cd "$REPO" || exit 2
mkdir -p "$OUT/logs"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)") || {
  echo "gpu_check.sh: $PYTHON cannot import torch" >&2; exit 2; }
if [[ $DRY_RUN -eq 1 ]]; then
  GPU_IDS=-1; STEPS=3; CASES=3; CROP=(64 64 32); SPACING=2.0; NGF=2; NDF=4; BATCH=2; CAM_SLICES=4
  RANKS_AVAILABLE=2; SYNTH_LIMIT=2
elif [[ $GPUS -lt 1 ]]; then
  echo "gpu_check.sh: no CUDA GPU visible (torch.cuda.is_available() is False); use --dry-run on a CPU" >&2; exit 2
else
  GPU_IDS=0; CASES=8; CROP=(128 128 48); SPACING=1.0; NGF=16; NDF=64; BATCH=4; CAM_SLICES=16
  RANKS_AVAILABLE=$GPUS; SYNTH_LIMIT=1000000
fi
RESUME_STEPS=$(( STEPS / 10 > 1 ? STEPS / 10 : 1 ))
echo "gpu_check: $(date -u +%FT%TZ) repo $REPO out $OUT gpus $GPUS dry_run $DRY_RUN steps $STEPS compile $COMPILE"
"$PYTHON" -c "import torch, platform; print('python', platform.python_version(), 'torch', torch.__version__, \
'cuda', torch.version.cuda, [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])"

declare -a REPORT=()
FAILED=0
LAST_SECONDS=0

# step NAME COMMAND...: run, log, time; records the status.
step() {
  local name="$1"; shift
  local start end status
  start=$(date +%s.%N)
  "$@" >"$OUT/logs/$name.log" 2>&1
  status=$?
  end=$(date +%s.%N)
  LAST_SECONDS=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
  if [[ $status -eq 0 ]]; then
    echo "[ok]     $name (${LAST_SECONDS} s)"
  else
    echo "[FAILED] $name (exit $status, ${LAST_SECONDS} s): tail of $OUT/logs/$name.log" >&2
    tail -n 5 "$OUT/logs/$name.log" >&2
    FAILED=1
  fi
  return $status
}

record() { REPORT+=("$(printf '%-22s %-8s %8s s  %s' "$1" "$2" "$3" "$4")"); }
skip() { echo "[skip]   $1: $2"; record "$1" skipped - "$2"; }

# per_step LONG_S SHORT_S LONG_STEPS SHORT_STEPS: seconds per step without the start-up time.
per_step() { awk -v a="$1" -v b="$2" -v n="$3" -v m="$4" 'BEGIN { if (n > m) printf "%.4f", (a - b) / (n - m); else print "n/a" }'; }

DATA="$OUT/cohort"
CKPT="$OUT/checkpoints"
RESULTS="$OUT/results"
TRAIN_COMMON=(--dataroot "$DATA/straightened" --split_json "$DATA/vertebra_data.json" --checkpoints_dir "$CKPT"
              --cam_dir "$DATA/heatmap" --ngf "$NGF" --ndf "$NDF" --batch_size "$BATCH" --num_threads 2 --no_progress
              --val_freq 0 --save_epoch_freq 100000 --print_freq 10 --no_html --no_tensorboard --seed 0)

# ------------------------------------------------------------------ tests
if [[ $SKIP_TESTS -eq 1 ]]; then
  skip tests "--skip_tests"
elif [[ $DRY_RUN -eq 1 ]]; then
  step tests "$PYTHON" -m pytest -q -m "not slow" tests/scripts/test_gpu_paths.py && record tests ok "$LAST_SECONDS" "GPU tests file only (dry run)" \
    || record tests FAILED "$LAST_SECONDS" "see logs/tests.log"
else
  step tests "$PYTHON" -m pytest -q -m "not slow" tests && record tests ok "$LAST_SECONDS" "$(tail -n 1 "$OUT/logs/tests.log")" \
    || record tests FAILED "$LAST_SECONDS" "$(tail -n 1 "$OUT/logs/tests.log")"
fi

# ------------------------------------------------------------------ cohort
cohort() {
  rm -rf "$DATA" && "$PYTHON" data/make_phantoms.py --out "$DATA" --cases "$CASES" --seed 1 --vertebrae T10-L5 \
      --workers 4 --no_progress \
    && "$PYTHON" straighten/location_json_local.py --root "$DATA" --quiet \
    && "$PYTHON" straighten/straighten_mask_3d.py --root "$DATA" --out "$DATA/straightened" \
      --crop_size "${CROP[@]}" --spacing "$SPACING" --workers 4 --quiet
}
if step cohort cohort; then
  record cohort ok "$LAST_SECONDS" "$CASES phantom cases, crops ${CROP[*]} at $SPACING mm"
else
  record cohort FAILED "$LAST_SECONDS" "nothing else can run"
  printf '%s\n' "${REPORT[@]}"; exit 1
fi
VERTEBRAE=$(find "$DATA/straightened/label" -name '*.nii.gz' | wc -l)

# ------------------------------------------------------------------ classifier + Grad-CAM
if step classifier "$PYTHON" Attention/train_classifier.py --dataroot "$DATA/straightened" \
    --split_json "$DATA/vertebra_data.json" --name classifier --checkpoints_dir "$CKPT" --arch small \
    --n_epochs 1 --n_epochs_decay 1 --n_slices 8 --slices_per_vertebra 4 --gpu_ids "$GPU_IDS" --seed 0; then
  record classifier ok "$LAST_SECONDS" "small classifier, 2 epochs"
  if step gradcam "$PYTHON" Attention/grad_CAM_3d_sagittal.py --dataroot "$DATA/straightened" --name classifier \
      --checkpoints_dir "$CKPT" --out "$DATA/heatmap" --n_slices "$CAM_SLICES" --no_png --gpu_ids "$GPU_IDS"; then
    record gradcam ok "$LAST_SECONDS" "$(awk -v s="$LAST_SECONDS" -v n="$VERTEBRAE" 'BEGIN { printf "%.3f s/vertebra (%d, with start-up)", s / n, n }')"
  else
    record gradcam FAILED "$LAST_SECONDS" "see logs/gradcam.log"
  fi
else
  record classifier FAILED "$LAST_SECONDS" "see logs/classifier.log"
fi

# ------------------------------------------------------------------ training + resume (one device)
# train_and_resume NAME LAUNCH... -- FLAGS...: N steps, then resume for N/10 more; records s/step.
train_and_resume() {
  local name="$1"; shift
  local launch=()
  while [[ "$1" != "--" ]]; do launch+=("$1"); shift; done; shift
  local long short
  if ! step "$name" "${launch[@]}" train.py "${TRAIN_COMMON[@]}" --name "$name" --max_steps "$STEPS" "$@"; then
    record "$name" FAILED "$LAST_SECONDS" "see logs/$name.log"; return 1
  fi
  long=$LAST_SECONDS
  if ! step "${name}_resume" "${launch[@]}" train.py "${TRAIN_COMMON[@]}" --name "$name" --continue_train \
      --max_steps $(( STEPS + RESUME_STEPS )) "$@"; then
    record "$name" FAILED "$long" "train ok, resume failed: see logs/${name}_resume.log"; return 1
  fi
  short=$LAST_SECONDS
  if ! grep -q "resuming from" "$OUT/logs/${name}_resume.log"; then
    record "$name" FAILED "$long" "resume did not resume"; FAILED=1; return 1
  fi
  record "$name" ok "$long" "$(per_step "$long" "$short" "$STEPS" "$RESUME_STEPS") s/step, resume ok"
}

train_and_resume train "$PYTHON" -- --gpu_ids "$GPU_IDS"
if [[ $COMPILE -eq 1 ]]; then
  train_and_resume train_compile "$PYTHON" -- --gpu_ids "$GPU_IDS" --compile
fi
train_and_resume amp_bf16 "$PYTHON" -- --gpu_ids "$GPU_IDS" --amp --amp_dtype bf16
if [[ $DRY_RUN -eq 1 ]]; then
  skip amp_fp16 "float16 autocast is GPU only"
else
  train_and_resume amp_fp16 "$PYTHON" -- --gpu_ids "$GPU_IDS" --amp --amp_dtype fp16
fi

# ------------------------------------------------------------------ --gpu_ids 1 stays off GPU 0
gpu1_check() {
  "$PYTHON" train.py "${TRAIN_COMMON[@]}" --name gpu1 --max_steps 20 --gpu_ids 1 &
  local pid=$! seen_gpu0=0 uuid0
  uuid0=$(nvidia-smi --query-gpu=uuid --format=csv,noheader -i 0)
  while kill -0 "$pid" 2>/dev/null; do
    if nvidia-smi --query-compute-apps=pid,gpu_uuid --format=csv,noheader | grep -q "^$pid, $uuid0"; then seen_gpu0=1; fi
    sleep 1
  done
  wait "$pid" || return 1
  [[ $seen_gpu0 -eq 0 ]] || { echo "process $pid opened a context on GPU 0"; return 1; }
}
if [[ $DRY_RUN -eq 1 || $GPUS -lt 2 ]]; then
  skip gpu1 "needs 2 GPUs and nvidia-smi"
elif step gpu1 gpu1_check; then
  record gpu1 ok "$LAST_SECONDS" "no context on GPU 0"
else
  record gpu1 FAILED "$LAST_SECONDS" "see logs/gpu1.log"
fi

# ------------------------------------------------------------------ torchrun, 2 ranks
TORCHRUN=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node 2)
if [[ $RANKS_AVAILABLE -lt 2 ]]; then
  skip ddp "needs 2 GPUs"
  skip ddp_wgangp "needs 2 GPUs"
else
  DDP_IDS=(); [[ $DRY_RUN -eq 1 ]] && DDP_IDS=(--gpu_ids -1)  # on GPUs: the default --gpu_ids auto
  train_and_resume ddp "${TORCHRUN[@]}" -- "${DDP_IDS[@]}"
  if step ddp_wgangp "${TORCHRUN[@]}" train.py "${TRAIN_COMMON[@]}" --name ddp_wgangp --max_steps 10 \
      --gan_mode wgangp --norm batch "${DDP_IDS[@]}"; then
    record ddp_wgangp ok "$LAST_SECONDS" "WGAN-GP critic with batch norm on 2 ranks"
  else
    record ddp_wgangp FAILED "$LAST_SECONDS" "see logs/ddp_wgangp.log"
  fi
fi

# ------------------------------------------------------------------ synthesis
synthesis_rate() {  # s/vertebra from a synthesis summary
  "$PYTHON" -c "import json, sys; s = json.load(open(sys.argv[1])); n = len(s['succeeded']); \
print(f\"{s['seconds'] / max(n, 1):.3f} s/vertebra ({n} vertebrae, {len(s['failed'])} failed)\")" "$1"
}
SYNTH=(eval_3d_sagittal_twostage.py --dataroot "$DATA/straightened" --split_json "$DATA/vertebra_data.json"
       --cam_dir "$DATA/heatmap" --checkpoints_dir "$CKPT" --name train --no_progress --overwrite
       --num_test "$SYNTH_LIMIT")
if [[ ! -f "$CKPT/train/latest.pth" ]]; then
  skip synthesis "no trained model"
else
  if step synthesis "$PYTHON" "${SYNTH[@]}" --results_dir "$RESULTS/one" --gpu_ids "$GPU_IDS"; then
    record synthesis ok "$LAST_SECONDS" "$(synthesis_rate "$RESULTS/one/train/synthesis_summary.json")"
  else
    record synthesis FAILED "$LAST_SECONDS" "see logs/synthesis.log"
  fi
  if [[ $COMPILE -eq 1 ]]; then
    # first run: compilation + synthesis; second run (same process start-up, new process, warm compile cache)
    if step synthesis_compile "$PYTHON" "${SYNTH[@]}" --results_dir "$RESULTS/compiled" --gpu_ids "$GPU_IDS" --compile \
        && cp "$RESULTS/compiled/train/synthesis_summary.json" "$OUT/logs/synthesis_compile_first.json" \
        && step synthesis_compile_warm "$PYTHON" "${SYNTH[@]}" --results_dir "$RESULTS/compiled" --gpu_ids "$GPU_IDS" \
          --compile; then
      record synthesis_compile ok "$LAST_SECONDS" "first $(synthesis_rate "$OUT/logs/synthesis_compile_first.json"); \
warm cache $(synthesis_rate "$RESULTS/compiled/train/synthesis_summary.json")"
    else
      record synthesis_compile FAILED "$LAST_SECONDS" "see logs/synthesis_compile*.log"
    fi
  fi
  if [[ $RANKS_AVAILABLE -lt 2 ]]; then
    skip synthesis_ddp "needs 2 GPUs"
  else
    DDP_IDS=(); [[ $DRY_RUN -eq 1 ]] && DDP_IDS=(--gpu_ids -1)
    if step synthesis_ddp "${TORCHRUN[@]}" "${SYNTH[@]}" --results_dir "$RESULTS/two" "${DDP_IDS[@]}"; then
      record synthesis_ddp ok "$LAST_SECONDS" "$(synthesis_rate "$RESULTS/two/train/synthesis_summary.json")"
    else
      record synthesis_ddp FAILED "$LAST_SECONDS" "see logs/synthesis_ddp.log"
    fi
  fi
fi

echo
echo "step                   status    seconds   result"
printf '%s\n' "${REPORT[@]}"
exit $FAILED
