#!/usr/bin/env bash
# Reproduce the study end to end: simulate a dataset, fit every registered model (the five), evaluate them.
#
#   scripts/reproduce.sh DATASET PRESET        (or: make reproduce DATASET=model_a PRESET=small)
#
# DATASET: model_a | model_b.  PRESET:
#   full   the study's sizes: 25,000 train and 2,500 val no_sub images, 50 epochs. The test set
#          has N_TEST images per class (simulate's --n-test): 2,500 gives the study's 2,500
#          no_sub images, against 2,500 sphere + 2,500 vort (the study: 1,250 + 1,250). ROC-AUC
#          does not depend on the class ratio, only its sampling noise shrinks.
#   small  sized to finish on a 2-core CPU in under 20 minutes in total (see the sizes below).
#   study  the study's table where it was made (issue 18): the study's substructure
#          (simulate --substructure study) and its sampler (--parameter-grid 5: each class
#          on its own grid of 5 values per parameter; docs/study_sampler.md), its sizes (25,000 train, 2,500 val with 625 + 625
#          labelled sub, 1,250 test per class) and its four models only (aae vae dcae rbm),
#          30 epochs each (the budget measured on our CPU, docs/results.md; the study ran 500
#          on a GPU: EPOCHS=500 DEVICE=cuda). 70-100 s per epoch and model on one free core.
#   cpu    the study's 25,000 training images but 5 epochs; 1,250 test images per class
#          (1,250 no_sub against 1,250 sphere + 1,250 vort).
#   release  the shipped checkpoints' budget (release 2): 25,000 training images, 5 epochs
#          on model_a (EPOCHS=4 on model_b), 2,000 val no_sub + 400 sphere + 400 vort (the
#          labelled split the default score and model are chosen on), 1,000 test images per
#          class; weights stored in float16. About 2 hours per dataset on a 2-core CPU.
#
# Every size is a variable below, overridable from the environment, e.g.
#   N_TRAIN=5000 EPOCHS=10 scripts/reproduce.sh model_a small
# Other settings (environment):
#   PY          python to use (default .venv/bin/python)
#   DATA_DIR    dataset folder          (default data/<dataset>_<preset>)
#   CKPT_OUT    checkpoint folder       (default runs/<dataset>_<preset>/checkpoints)
#   REPORT_DIR  report folder           (default reports/<dataset>_<preset>)
#   DEVICE      auto | cpu | cuda       (default auto)
#   SEED        random seed             (default 0)
#   WORKERS     simulation processes    (default: all cores)
#   IMAGE_SIZE  simulated image side in pixels (default: simulate's, the study's 150)
#   FIT_ARGS    extra arguments for `fit`, e.g. "--arch-arg latent_dim=128"
#   N_VAL_SUB   labelled validation images per sub class (default: simulate's, N_VAL / 4)
#   SUBSTRUCTURE  stated | study: simulate's --substructure (default: simulate's, stated;
#               the study preset's: study)
#   PARAMETER_GRID  K: simulate's --parameter-grid, the study's sampler (K values per
#               parameter per class; docs/study_sampler.md). Default: none; the study
#               preset's: 5 (PARAMETER_GRID= for independent draws). With a grid, two
#               control test sets follow the evaluation (DATA_DIR-shared: every class on the
#               no_sub grid; DATA_DIR-nosignal: own grids, no substructure), evaluated into
#               REPORT_DIR-shared and REPORT_DIR-nosignal and compared in one table
#   MODELS      the registered models to fit, space-separated (default: every one; the
#               study preset's: aae vae dcae rbm)
#   WEIGHTS_DTYPE  float16 (default: half the size, calibrated as stored) or float32
#   OVERWRITE=1 replace existing outputs (refused otherwise)
#   REUSE_DATA=1 keep an existing DATA_DIR instead of simulating it again
#   RESUME=1    continue a run that was cut off: keeps DATA_DIR and the finished checkpoints,
#               and `fit --resume` picks each unfinished model up after its last epoch
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
    exit 2
}

[[ $# -eq 2 ]] || usage
DATASET=$1
PRESET=$2
case "$DATASET" in
    model_a | model_b) ;;
    *) echo "error: unknown dataset '$DATASET'; valid: model_a, model_b" >&2; exit 2 ;;
esac

case "$PRESET" in
    full)
        : "${N_TRAIN:=25000}" "${N_VAL:=2500}" "${N_TEST:=2500}"
        : "${EPOCHS:=50}" "${BATCH_SIZE:=100}"
        ;;
    cpu)
        : "${N_TRAIN:=25000}" "${N_VAL:=2500}" "${N_TEST:=1250}"
        : "${EPOCHS:=5}" "${BATCH_SIZE:=100}"
        ;;
    release)
        : "${N_TRAIN:=25000}" "${N_VAL:=2000}" "${N_VAL_SUB:=400}" "${N_TEST:=1000}"
        : "${EPOCHS:=5}" "${BATCH_SIZE:=100}"
        ;;
    small)
        # CPU time measured on the project's 2-core CPU (busy with other jobs, so an upper
        # bound): simulate 5,000 images ~45 s; fit ~25 s start-up + ~126 s per epoch for all
        # four (aae 52, dcae 32, vae 30, rbm 12); evaluate ~27 s. 8 epochs: ~1,100 CPU s,
        # i.e. under 19 minutes even on one core; less wall time with torch on two. LensFit
        # (part of --model all since session 2) adds ~70 ms per image per epoch: ~28 min more.
        : "${N_TRAIN:=3000}" "${N_VAL:=500}" "${N_TEST:=500}"
        : "${EPOCHS:=8}" "${BATCH_SIZE:=100}"
        ;;
    study)
        : "${N_TRAIN:=25000}" "${N_VAL:=2500}" "${N_VAL_SUB:=625}" "${N_TEST:=1250}"
        : "${EPOCHS:=30}" "${BATCH_SIZE:=100}" "${SUBSTRUCTURE:=study}" "${PARAMETER_GRID=5}"
        : "${MODELS:=aae vae dcae rbm}"
        ;;
    *) echo "error: unknown preset '$PRESET'; valid: full, cpu, release, small, study" >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
NAME="${DATASET}_${PRESET}"
DATA_DIR=${DATA_DIR:-data/$NAME}
CKPT_OUT=${CKPT_OUT:-runs/$NAME/checkpoints}
REPORT_DIR=${REPORT_DIR:-reports/$NAME}
DEVICE=${DEVICE:-auto}
SEED=${SEED:-0}
OVERWRITE=${OVERWRITE:-0}
REUSE_DATA=${REUSE_DATA:-0}
RESUME=${RESUME:-0}
WEIGHTS_DTYPE=${WEIGHTS_DTYPE:-float16}
[[ "$RESUME" == 1 ]] && REUSE_DATA=1
read -r -a FIT_EXTRA <<< "${FIT_ARGS:-}"

[[ -x "$PY" ]] || { echo "error: $PY not found; run 'make install' or set PY" >&2; exit 2; }
read -r -a REGISTERED <<< "$("$PY" -c 'import models; print(" ".join(models.list_models()))')"
read -r -a MODELS <<< "${MODELS:-${REGISTERED[*]}}"
for model in "${MODELS[@]}"; do
    if [[ " ${REGISTERED[*]} " != *" $model "* ]]; then
        echo "error: unknown model '$model' in MODELS; valid: ${REGISTERED[*]}" >&2
        exit 2
    fi
done

# Refuse to replace anything before doing any work.
if [[ "$OVERWRITE" != 1 ]]; then
    existing=()
    if [[ -e "$DATA_DIR" && "$REUSE_DATA" != 1 ]]; then existing+=("$DATA_DIR"); fi
    if [[ "$RESUME" != 1 && -d "$CKPT_OUT" && -n "$(ls -A "$CKPT_OUT")" ]]; then
        existing+=("$CKPT_OUT")
    fi
    if [[ -e "$REPORT_DIR" ]]; then existing+=("$REPORT_DIR"); fi
    if [[ -n "${PARAMETER_GRID:-}" ]]; then
        for control in shared nosignal; do
            if [[ -e "$DATA_DIR-$control" && "$REUSE_DATA" != 1 ]]; then
                existing+=("$DATA_DIR-$control")
            fi
            if [[ -e "$REPORT_DIR-$control" ]]; then existing+=("$REPORT_DIR-$control"); fi
        done
    fi
    if [[ ${#existing[@]} -gt 0 ]]; then
        echo "error: ${existing[*]} exist(s); set OVERWRITE=1 to replace (or REUSE_DATA=1 to" \
            "keep the dataset)" >&2
        exit 2
    fi
fi
overwrite_flag=()
[[ "$OVERWRITE" == 1 ]] && overwrite_flag=(--overwrite)

stage() { printf '\n=== %s (%s) ===\n' "$1" "$(date +%H:%M:%S)"; }
START=$SECONDS

if [[ "$REUSE_DATA" == 1 && -e "$DATA_DIR" ]]; then
    stage "reusing $DATA_DIR"
else
    stage "simulate $DATASET: $N_TRAIN train, $N_VAL val, $N_TEST test per class -> $DATA_DIR"
    sim_args=(--dataset "$DATASET" --out "$DATA_DIR" --n-train "$N_TRAIN" --n-val "$N_VAL"
        --n-test "$N_TEST" --seed "$SEED")
    [[ -n "${N_VAL_SUB:-}" ]] && sim_args+=(--n-val-sub "$N_VAL_SUB")
    [[ -n "${SUBSTRUCTURE:-}" ]] && sim_args+=(--substructure "$SUBSTRUCTURE")
    [[ -n "${PARAMETER_GRID:-}" ]] && sim_args+=(--parameter-grid "$PARAMETER_GRID")
    [[ -n "${WORKERS:-}" ]] && sim_args+=(--workers "$WORKERS")
    [[ -n "${IMAGE_SIZE:-}" ]] && sim_args+=(--image-size "$IMAGE_SIZE")
    "$PY" -m training simulate "${sim_args[@]}" "${overwrite_flag[@]}"
fi
T_SIM=$((SECONDS - START))

# One `fit` per registered model (each seeded alike, so the same as `--model all`), so that a
# run cut off can go on with RESUME=1: finished models are kept, the others resume.
stage "fit ${MODELS[*]}: $EPOCHS epochs, batch $BATCH_SIZE, device $DEVICE -> $CKPT_OUT"
for model in "${MODELS[@]}"; do
    if [[ "$RESUME" == 1 && -f "$CKPT_OUT/$model/config.json" ]]; then
        echo "$model: $CKPT_OUT/$model is finished; kept"
        continue
    fi
    "$PY" -m training fit --model "$model" --data "$DATA_DIR" --out "$CKPT_OUT" \
        --epochs "$EPOCHS" --batch-size "$BATCH_SIZE" --device "$DEVICE" --seed "$SEED" \
        --weights-dtype "$WEIGHTS_DTYPE" --resume "${overwrite_flag[@]}" "${FIT_EXTRA[@]}"
done
T_FIT=$((SECONDS - START - T_SIM))

stage "evaluate -> $REPORT_DIR"
"$PY" -m training evaluate --checkpoints "$CKPT_OUT" --data "$DATA_DIR" --out "$REPORT_DIR" \
    --device "$DEVICE" --dataset "$DATASET" --update-checkpoints "${overwrite_flag[@]}"
T_EVAL=$((SECONDS - START - T_SIM - T_FIT))

stage "report"
cat "$REPORT_DIR/report.md"

if [[ -n "${PARAMETER_GRID:-}" ]]; then
    # The study's sampler gives each class its own grid: do the models find the subhalos or
    # the grids? The same seed's no_sub test images, against sub classes on the no_sub grid
    # (substructure only), and on their own grids without substructure (grids only).
    for control in shared nosignal; do
        stage "control '$control' -> $DATA_DIR-$control, $REPORT_DIR-$control"
        if [[ "$REUSE_DATA" == 1 && -e "$DATA_DIR-$control" ]]; then
            echo "reusing $DATA_DIR-$control"
        else
            ctl_args=(--dataset "$DATASET" --out "$DATA_DIR-$control" --n-train 0 --n-val 0
                --n-test "$N_TEST" --seed "$SEED" --parameter-grid "$PARAMETER_GRID")
            if [[ "$control" == shared ]]; then
                ctl_args+=(--shared-grid)
                [[ -n "${SUBSTRUCTURE:-}" ]] && ctl_args+=(--substructure "$SUBSTRUCTURE")
            else
                ctl_args+=(--subhalo-mass-fraction 1e-6)
            fi
            [[ -n "${WORKERS:-}" ]] && ctl_args+=(--workers "$WORKERS")
            [[ -n "${IMAGE_SIZE:-}" ]] && ctl_args+=(--image-size "$IMAGE_SIZE")
            "$PY" -m training simulate "${ctl_args[@]}" "${overwrite_flag[@]}"
        fi
        "$PY" -m training evaluate --checkpoints "$CKPT_OUT" --data "$DATA_DIR-$control" \
            --out "$REPORT_DIR-$control" --device "$DEVICE" --dataset "$DATASET" \
            "${overwrite_flag[@]}"
    done
    stage "the study's sampler and its controls"
    "$PY" scripts/sampler_controls.py "$REPORT_DIR" "$REPORT_DIR-shared" "$REPORT_DIR-nosignal"
fi
printf '\nwall time: simulate %ds, fit %ds, evaluate %ds, total %ds\n' \
    "$T_SIM" "$T_FIT" "$T_EVAL" "$((SECONDS - START))"
echo "checkpoints: $CKPT_OUT   report: $REPORT_DIR   (serve them: DEEPLENSE_CHECKPOINT_DIR=$CKPT_OUT)"
