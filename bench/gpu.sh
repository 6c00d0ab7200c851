#!/usr/bin/env bash
# The whole accelerator sweep of issue 16 in one call, under 8 minutes on an H200:
#   1. the profile of one segment (bench/profile_separation.py --device cuda);
#   2. the sweep (bench/bench_gpu.py): engines x fp32 / TF32 / bf16 / fp16 autocast on a
#      3-minute track (device time, x real time, difference to fp32), batch sizes (the worker's
#      own choice from free memory and fixed ones), a CUDA-graph probe, cross-job batching;
#   3. side by side (bench/bench_separation.py --device cuda, fp32): the worker per engine, the
#      Demucs CLI given all clips, the apply_model loop, 10 x 30 s clips.
# Results (with the GPU's name) go to --out (default bench/results): profile_DEVICE.md,
# gpu_DEVICE.md, separation_DEVICE.md, gpu_sh.log, nvidia_smi.txt.
#
#   bench/gpu.sh                          # on a machine with a GPU
#   bench/gpu.sh --device cpu --quick     # a check anywhere (tiny model, short clips)
#   bench/gpu.sh --out "$OUT"             # the device tool: results come back from $OUT
#
# Python: .venv/bin/python when it exists (make install); else the machine's python3, with the
# wheels in .whl (bench/gpu_wheels.sh, made where pip reaches the index) installed first into
# /tmp/stemfleet-site. The worker rows need PostgreSQL's initdb/pg_ctl; without them step 3
# runs the CLI and apply_model rows only and says so.
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda QUICK=0 RESULTS_DIR=bench/results
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE=$2; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --out) RESULTS_DIR=$2; shift 2 ;;
        *) echo "gpu.sh: unknown argument $1 (--device cpu|cuda, --quick, --out DIR)" >&2; exit 2 ;;
    esac
done
mkdir -p "$RESULTS_DIR"
LOG=$RESULTS_DIR/gpu_sh.log
: >"$LOG"
say() { echo "[gpu.sh $(date -u +%H:%M:%S)] $*" | tee -a "$LOG" >&2; }

if [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
else
    PY=python3
    if ls .whl/*.whl >/dev/null 2>&1; then
        say "installing $(ls .whl/*.whl | wc -l) carried wheels into /tmp/stemfleet-site"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/stemfleet-site .whl/*.whl >>"$LOG" 2>&1 || { say "wheel install failed"; exit 1; }
        export PYTHONPATH=/tmp/stemfleet-site:$PWD${PYTHONPATH:+:$PYTHONPATH}
    elif ! "$PY" -c "import demucs, psycopg, pydantic_settings" 2>/dev/null; then
        say "no .venv and no .whl: running make install"
        make install >>"$LOG" 2>&1 || { say "make install failed (see $LOG)"; exit 1; }
        PY=.venv/bin/python
    fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
say "python $($PY -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__)')"
if [ "$DEVICE" = cuda ]; then
    nvidia-smi >"$RESULTS_DIR/nvidia_smi.txt" 2>&1 || say "nvidia-smi failed"
fi

QUICK_ARG=() ENGINES=eager SCALE=1
if [ "$QUICK" = 1 ]; then
    QUICK_ARG=(--quick --threads 1)
    SCALE=8  # a check on a shared CPU: generous limits
else
    for engine in compiled onnx; do
        if "$PY" -c "import sys; from app.settings import Settings; from worker.engines import REGISTRY; import importlib; importlib.import_module(REGISTRY['$engine'])" 2>/dev/null; then
            ENGINES=$ENGINES,$engine
        fi
    done
fi
say "device $DEVICE, engines $ENGINES, quick $QUICK, results in $RESULTS_DIR"
failed=0
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log it, go on after a failure
    local name=$1 limit=$2
    shift 2
    say "$name: $*"
    # SIGINT first: Python unwinds, so a benchmark stops the Postgres it started
    if ! timeout --signal=INT --kill-after=30 $((limit * SCALE)) "$@" >>"$LOG" 2>&1; then
        say "$name FAILED or ran past $((limit * SCALE)) s (see $LOG)"
        failed=$((failed + 1))
    fi
}

step profile 75 "$PY" bench/profile_separation.py --device "$DEVICE" "${QUICK_ARG[@]}" \
    --repeats 1 --results "$RESULTS_DIR/profile_$DEVICE.md"
step sweep 230 "$PY" bench/bench_gpu.py --device "$DEVICE" "${QUICK_ARG[@]}" --engines "$ENGINES" \
    --budget-s 140 --results "$RESULTS_DIR/gpu_$DEVICE.md"
WORKER_ENGINES=$ENGINES
if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    say "no PostgreSQL server binaries here: the side-by-side runs without the worker rows"
    WORKER_ENGINES=
fi
step side-by-side 170 "$PY" bench/bench_separation.py --device "$DEVICE" "${QUICK_ARG[@]}" \
    --engines "$WORKER_ENGINES" --rows cli-all,apply --rounds 1 \
    --results "$RESULTS_DIR/separation_$DEVICE.md"
say "done: $failed step(s) failed"
[ "$failed" = 0 ]
