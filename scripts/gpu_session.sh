#!/usr/bin/env bash
# The GPU checks, as prepared runs for a session lent a GPU machine (15 minutes of device time in all):
# full-ranking evaluation on Gowalla, BPR-MF on Gowalla at batch 2,048 and 65,536 (dense and sparse Adam; the
# dense runs side by side with RecBole 1.2.1 when its wheels travel), and the 1M-16M interaction scale table.
# Two calls, made one right after the other (the machine goes back after 30 s idle): STEPS="tests bpr eval step" (the
# default; step limits 490 s) and STEPS="compile scale" (270 s); with a machine's start both fit the 15 minutes.
# step and compile: Lightning's per-step overhead, and what fused Adam, device-resident batches against pinned host
# batches, and torch.compile with and without CUDA graphs buy. One JSON line per result goes to
# $OUT/results.jsonl, stderr to $OUT/stderr.log.
#
# That machine has torch and pytorch-lightning but not hydra-core, omegaconf or antlr4 (MLflow and Optuna are not
# needed: tracking is off in the benchmarks), and ../shared does not travel. Prepare here, once:
#   (/.whl/ and /.device/ are in .gitignore)
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl hydra-core==1.3.8 omegaconf==2.3.1
#   python3 -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3     # a source release: build its wheel
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl recbole==1.2.1 colorlog==4.7.2 \
#       thop==0.1.1.post2209072238 texttable==1.7.2       # RecBole and the needs of its that machine lacks
# (RecBole's other needs are there: numpy, scipy, pandas, scikit-learn, tensorboard, tabulate, pyyaml, psutil,
# colorama; it runs without ray and plotly, tried with numpy 2.4 and pandas 3.1 in a venv holding only these)
#   mkdir -p .device/data && cp -r ../shared/datasets/gowalla-lightgcn .device/data/
# then run it there with the device tool: command "bash scripts/gpu_session.sh", carry [".whl", ".device"],
# timeout_s 520 and 300; STEPS=lightgcn (a call of its own, 330 s) trains the paper's
# LightGCN for LIGHTGCN_TIME to measure its epoch time; STEPS=lightgcn_large (a call of its own, 560 s) runs the
# large-batch reproduction, experiment=gowalla_lightgcn_large_batch, to its end; DEVICE=cpu tries a step here.
set -uo pipefail
OUT=${OUT:-gpu_out}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-tests bpr eval step}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1 && ! python3 -c "import hydra, omegaconf" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" RECFORGE_DATA_DIR=${RECFORGE_DATA_DIR:-.device/data} PYTHONUNBUFFERED=1
RECBOLE=()  # bench.py --recbole: RecBole's run in its own interpreter, on the same split, batch and device
if python3 -c "import recbole" 2>/dev/null; then RECBOLE=(--recbole python3); fi  # used as ${RECBOLE[@]+...}:
# an empty array under set -u needs that form in bash before 4.4
if [ "$DEVICE" = cuda ]; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"; fi

step() {  # step NAME SECONDS COMMAND...: one result line per run; a step that runs out of time is reported, not fatal
    local name=$1 limit=$2
    shift 2
    echo "== $name ($(date +%T))"
    timeout "$limit" "$@" 2>>"$OUT/stderr.log" | tee -a "$OUT/results.jsonl" || echo "   $name: failed or timed out (rc $?)"
}
for s in $STEPS; do
    case $s in
    tests)  # the CUDA-only tests, and two epochs of the training path with the user-first sampler on the GPU
        echo "== tests ($(date +%T))"
        timeout 30 python3 -m pytest -q -p no:cacheprovider tests/unit/test_sampler.py >"$OUT/tests.log" 2>&1
        echo "   tests: rc $? ($(tail -1 "$OUT/tests.log"))"
        timeout 30 python3 -m recforge.train tracking=none callbacks=none trainer.max_epochs=2 \
            datamodule.sample_users_uniformly=true hydra.run.dir=/tmp/train_gpu >>"$OUT/tests.log" 2>&1
        echo "   train: rc $?" ;;
    eval) step eval 60 python3 scripts/bench_eval.py --device "$DEVICE" --train-steps 300 --json ;;
    bpr)
        step bpr-2048 130 python3 scripts/bench.py --data gowalla --device "$DEVICE" --batch-size 2048 --epochs 3 --json \
            ${RECBOLE[@]+"${RECBOLE[@]}"}
        step bpr-65536 100 python3 scripts/bench.py --data gowalla --device "$DEVICE" --batch-size 65536 --epochs 5 --json \
            ${RECBOLE[@]+"${RECBOLE[@]}"}
        step bpr-65536-sparse 50 python3 scripts/bench.py --data gowalla --device "$DEVICE" --batch-size 65536 --epochs 5 \
            --sparse --json ;;
    step) step step 90 python3 scripts/bench_step.py --data gowalla --device "$DEVICE" --batch-sizes 2048 65536 \
        --variants adam_foreach adam lazy_adam --rounds 1 --no-compile --json ;;
    compile) step compile 90 python3 scripts/bench_step.py --data gowalla --device "$DEVICE" --batch-sizes 65536 \
        --variants adam --rounds 1 --json ;;
    scale) step scale 180 python3 scripts/bench_scale.py --device "$DEVICE" --lightgcn-limit-batches 0 --json \
        --work-dir /tmp/scale ;;
    lightgcn)  # the paper's LightGCN on Gowalla for LIGHTGCN_TIME (its 1,000 epochs outlast one call): s/epoch, early metrics
        echo "== lightgcn ($(date +%T))"
        timeout 330 python3 -m recforge.train experiment=gowalla_lightgcn tracking=none hydra.run.dir=/tmp/lightgcn \
            "+trainer.max_time=\"${LIGHTGCN_TIME:-00:00:04:00}\"" >"$OUT/lightgcn.log" 2>&1 \
            || echo "   lightgcn: failed or timed out (rc $?)"
        cp /tmp/lightgcn/metrics.json "$OUT/lightgcn_metrics.json" 2>/dev/null ;;
    lightgcn_large)  # the large-batch LightGCN reproduction whole (50 steps per epoch): a call of its own, 560 s
        echo "== lightgcn_large ($(date +%T))"
        timeout 540 python3 -m recforge.train experiment=gowalla_lightgcn_large_batch tracking=none \
            hydra.run.dir=/tmp/lightgcn_large >"$OUT/lightgcn_large.log" 2>&1 || echo "   lightgcn_large: failed or timed out (rc $?)"
        cp /tmp/lightgcn_large/metrics.json "$OUT/lightgcn_large_metrics.json" 2>/dev/null ;;
    *) echo "unknown step $s (tests, bpr, eval, step, compile, scale, lightgcn, lightgcn_large)" >&2; exit 2 ;;
    esac
done
