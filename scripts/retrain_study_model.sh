#!/usr/bin/env bash
# Release 3 of one study model (issue 18): train it 30 epochs on the release data, ship it
# into checkpoints/DATASET/MODEL, and evaluate it on the 1% test split and on the study's
# substructure. Every step is resumable: run it again after an interruption.
#
#   scripts/retrain_study_model.sh DATASET MODEL
#
# DATASET: model_a | model_b.  MODEL: aae | vae | dcae | rbm.
# Steps (each skipped when its output exists):
#   1. data/DATASET_r2 (release 2's sizes, seed 0) and data/DATASET_study_test (the study's
#      substructure, 500 test images per class, seed 7) are simulated if absent;
#   2. `fit` (the study's recipe: Adam, one-cycle, batch 100; 30 epochs; float16 weights) into
#      runs/release3/DATASET, with --resume, so a cut-off run goes on after its last epoch;
#   3. the shipped checkpoints/DATASET/MODEL is moved to runs/release3/DATASET-replaced/MODEL
#      (kept, never deleted) and the new one copied in through a temporary folder;
#   4. `evaluate --update-checkpoints` on data/DATASET_r2's test split (every card of the set
#      takes the service's choice of default) into reports/release3/DATASET_MODEL, then on the
#      study's substructure into reports/release3/DATASET_MODEL_study.
# Environment: PY (default .venv/bin/python), EPOCHS (30), THREADS (torch threads; default
# torch's), NICE (10); for a small trial: DATA_DIR, STUDY_DIR, RUN_DIR, CKPT_SET (the folder
# of shipped checkpoints), REPORT_DIR, the sizes N_TRAIN, N_VAL, N_VAL_SUB, N_TEST,
# N_STUDY_TEST, IMAGE_SIZE, and FIT_ARGS (extra `fit` arguments, e.g. --tiny).
set -euo pipefail

[[ $# -eq 2 ]] || { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; exit 2; }
DATASET=$1
MODEL=$2
case "$DATASET" in model_a | model_b) ;; *) echo "error: unknown dataset '$DATASET'; valid: model_a, model_b" >&2; exit 2 ;; esac
case "$MODEL" in aae | vae | dcae | rbm) ;; *) echo "error: unknown study model '$MODEL'; valid: aae, vae, dcae, rbm" >&2; exit 2 ;; esac

cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
EPOCHS=${EPOCHS:-30}
NICE=${NICE:-10}
[[ -x "$PY" ]] || { echo "error: $PY not found; run 'make install' or set PY" >&2; exit 2; }
[[ -n "${THREADS:-}" ]] && export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
deeplense() { nice -n "$NICE" "$PY" -m training "$@"; }

DATA=${DATA_DIR:-data/${DATASET}_r2}
STUDY=${STUDY_DIR:-data/${DATASET}_study_test}
RUN=${RUN_DIR:-runs/release3/$DATASET}
CKPT_SET=${CKPT_SET:-checkpoints/$DATASET}
SHIPPED=$CKPT_SET/$MODEL
REPORT=${REPORT_DIR:-reports/release3}/${DATASET}_$MODEL
SIZE_ARGS=()
[[ -n "${IMAGE_SIZE:-}" ]] && SIZE_ARGS=(--image-size "$IMAGE_SIZE")
read -r -a FIT_EXTRA <<< "${FIT_ARGS:-}"

if [[ ! -f $DATA/manifest.json ]]; then
    deeplense simulate --dataset "$DATASET" --out "$DATA" --n-train "${N_TRAIN:-25000}" \
        --n-val "${N_VAL:-2000}" --n-val-sub "${N_VAL_SUB:-400}" --n-test "${N_TEST:-1000}" --seed 0 \
        "${SIZE_ARGS[@]}"
fi
if [[ ! -f $STUDY/manifest.json ]]; then
    deeplense simulate --dataset "$DATASET" --out "$STUDY" --n-train 2 --n-val 2 --n-val-sub 2 \
        --n-test "${N_STUDY_TEST:-500}" --seed 7 --substructure study "${SIZE_ARGS[@]}"
fi

if [[ ! -f $RUN/$MODEL/model.safetensors ]]; then
    deeplense fit --model "$MODEL" --data "$DATA" --out "$RUN" --epochs "$EPOCHS" \
        --batch-size "${BATCH_SIZE:-100}" --device cpu --seed 0 --weights-dtype float16 --resume \
        "${FIT_EXTRA[@]}"
fi

if ! cmp -s "$RUN/$MODEL/model.safetensors" "$SHIPPED/model.safetensors"; then
    if [[ -d $SHIPPED ]]; then
        replaced=$RUN-replaced/$MODEL
        [[ -e $replaced ]] && { echo "error: $replaced exists; move it away first" >&2; exit 2; }
        mkdir -p "$(dirname "$replaced")"
        mv "$SHIPPED" "$replaced"
    fi
    mkdir -p "$CKPT_SET"
    rm -rf "$SHIPPED.incoming"
    cp -r "$RUN/$MODEL" "$SHIPPED.incoming"
    mv "$SHIPPED.incoming" "$SHIPPED"
fi

if [[ ! -f $REPORT/metrics.json ]]; then
    deeplense evaluate --checkpoints "$CKPT_SET" --model "$MODEL" --data "$DATA" \
        --out "$REPORT" --device cpu --dataset "$DATASET" --update-checkpoints
fi
if [[ ! -f ${REPORT}_study/metrics.json ]]; then
    deeplense evaluate --checkpoints "$CKPT_SET" --model "$MODEL" --data "$STUDY" \
        --out "${REPORT}_study" --device cpu
fi
echo "shipped $SHIPPED; reports $REPORT and ${REPORT}_study"
