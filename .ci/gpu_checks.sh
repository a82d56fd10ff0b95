#!/usr/bin/env bash
# The GPU checks of the project in one script, for a machine with one CUDA GPU; docs/benchmarks.md
# says where each result goes. CI never runs it.
#
# On a GPU machine without internet access that has torch, OpenCV, simplejson and tqdm but not yacs,
# download the yacs wheel beforehand into .whl/ of the repository (the script installs what it finds
# there):
#     echo /.whl/ >> .git/info/exclude
#     python3 -m pip download --no-deps --only-binary=:all: -d .whl yacs==0.1.8
# Then run "bash .ci/gpu_checks.sh" in the repository root.
# Everything is logged to $OUT/gpu_checks.log, one line per check to $OUT/summary.txt.
#
# DRY_RUN=1 bash .ci/gpu_checks.sh runs the same steps at toy sizes on the CPU, to check the script itself.
set -uo pipefail

OUT=${OUT:-output/gpu_checks}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
LOG="$OUT/gpu_checks.log"
SUMMARY="$OUT/summary.txt"
: >"$LOG"
: >"$SUMMARY"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

WORK=$(mktemp -d)
if [ "${DRY_RUN:-0}" = 1 ]; then
    DEVICE=cpu
    TRAIN_BENCH=(--device cpu --depth 18 --classes 10 --batch 2 --size 64 --steps 3 --warmup 0)
    TRAIN_BENCH_FP32=("${TRAIN_BENCH[@]}")
    EXTRACT_BENCH=(--runs 1 MODEL.DEPTH 18 RESNET.TRANS_FUN basic_transform RESNET.WIDTH_PER_GROUP 16
                   MODEL.HEADS.REDUCTION_DIM 32 MODEL.LOCAL.ATTENTION_DIM 32 MODEL.LOCAL.DESCRIPTOR_DIM 16
                   EXTRACT.MAX_IMAGE_SIZE 128 EXTRACT.MAX_FEATURES 50)
    GPU_TRAIN=(TRAIN.AMP off TRAIN.CHANNELS_LAST False)
    DBA_BENCH=(--device cpu --rows 5000 --dim 64)
    LEARNED_BENCH=(--device cpu --repeats 1 --no-sv RERANKER.DIM 16 RERANKER.DEPTH 1 RERANKER.FFN_DIM 32
                   RERANKER.N_QUERY 30)
    LEARNED_SHORTLISTS=(3 4 6)
else
    DEVICE=cuda
    # training step: ResNet-50, 512 px, bf16, channels-last; fp32 without channels-last stands in for the seed's step
    TRAIN_BENCH=(--device cuda --size 512 --batch 32 --amp bf16 --channels-last --steps 9 --warmup 3)
    TRAIN_BENCH_FP32=(--device cuda --size 512 --batch 32 --amp off --steps 9 --warmup 3)
    # extraction: the CPU benchmark's settings, on the GPU
    EXTRACT_BENCH=(--runs 3 DEVICE cuda)
    GPU_TRAIN=(TRAIN.AMP bf16 TRAIN.CHANNELS_LAST True)
    # alpha-DBA of 200,000 x 512 on the GPU against faiss + NumPy on the machine's CPU cores
    DBA_BENCH=(--device cuda --chunk 16384)
    # the learned re-ranker (RERANKER.* defaults: 600 query, 50 database locals) per query on the GPU
    LEARNED_BENCH=(--device cuda --repeats 3 --no-sv)
    LEARNED_SHORTLISTS=(100 400 1600)
fi

check() {  # check NAME COMMAND...: run, log, and record the exit code and the last line
    local name=$1
    shift
    echo "=== $name: $*" | tee -a "$LOG"
    local start=$SECONDS
    timeout 240 "$@" >>"$LOG" 2>&1
    local code=$?
    echo "$name: exit $code, $((SECONDS - start)) s, last line: $(tail -n 1 "$LOG")" | tee -a "$SUMMARY"
}

check environment $PY -c "import torch; print(torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"
check cuda_tests $PY -m pytest -q -p no:cacheprovider tests/test_global_search.py tests/test_rerank_functions.py -k gpu
check train_step_bf16 $PY tools/benchmark_train.py "${TRAIN_BENCH[@]}"
check train_step_bf16_again $PY tools/benchmark_train.py "${TRAIN_BENCH[@]}"  # a second sample of the ratio
check train_step_fp32 $PY tools/benchmark_train.py "${TRAIN_BENCH_FP32[@]}"
check extraction $PY tools/benchmark_extract.py "${EXTRACT_BENCH[@]}"
check dba $PY tools/benchmark_dba.py "${DBA_BENCH[@]}"
for size in "${LEARNED_SHORTLISTS[@]}"; do
    check "learned_top$size" $PY tools/benchmark_learned.py --shortlist "$size" "${LEARNED_BENCH[@]}"
done
check synthetic_world $PY tools/make_synthetic.py --size tiny --out "$WORK/world" --workers 4
check train_tiny $PY train_delg.py --cfg configs/synthetic/demo_ci.yaml DEVICE "$DEVICE" "${GPU_TRAIN[@]}" \
    TRAIN.DATA_ROOT "$WORK/world/train" EVAL.DATA_ROOT "$WORK/world/test" OUT_DIR "$WORK/train" OPTIM.MAX_ITER 24 \
    DATA_LOADER.NUM_WORKERS 2
# a timm backbone (ConvNeXt-Atto, random weights) through the same training step
check train_tiny_timm $PY train_delg.py --cfg configs/synthetic/demo_ci.yaml DEVICE "$DEVICE" "${GPU_TRAIN[@]}" \
    TRAIN.DATA_ROOT "$WORK/world/train" EVAL.DATA_ROOT "$WORK/world/test" OUT_DIR "$WORK/train_timm" \
    OPTIM.MAX_ITER 24 DATA_LOADER.NUM_WORKERS 2 MODEL.TYPE timm TIMM.NAME convnext_atto
check extract_tiny $PY tools/extractor.py --cfg configs/synthetic/demo_ci.yaml DEVICE "$DEVICE" \
    TEST.WEIGHTS "$WORK/train/checkpoints/checkpoint_000000024.pth" EXTRACT.DATA_ROOT "$WORK/world/test" \
    OUT_DIR "$WORK/train"
check evaluate_tiny $PY tools/revisitop/evaluate.py --cfg configs/synthetic/demo_ci.yaml EVAL.DEVICE "$DEVICE" \
    EVAL.DATA_ROOT "$WORK/world/test" OUT_DIR "$WORK/train" EVAL.METHODS "['global']"

rm -rf "$WORK"
echo "summary: $SUMMARY"
cat "$SUMMARY"
