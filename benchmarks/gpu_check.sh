#!/usr/bin/env bash
# One command for a CUDA machine without network access, finished within GPU_CHECK_BUDGET seconds (default 540):
#
#   0. pick a Python with CUDA torch (PYTHON, else the checkout's .venv, else python3), install seesr from this
#      checkout into a private folder (no index, no build isolation) plus any wheels carried in WHEELS (.whl/);
#   1. environment: nvidia-smi and `seesr doctor --json` (versions, device, SDPA backends)    -> doctor.json
#   2. `pytest -m gpu` on the test files that carry the marker (JUnit XML)                   -> pytest_gpu.xml
#   3. `seesr doctor --check` on the GPU (fast path vs exact on tiny random models)          -> doctor_check.json
#   4. benchmarks/run_all.py against the time left (its files after every job)              -> results.json,
#                                                                                               RESULTS.md,
#                                                                                               bench_outputs.tar.gz
#
# Everything printed also goes to gpu_check.log as it happens, and summary.tsv gets one line per phase as soon as the
# phase ends, so a run cut short keeps every figure measured so far. The files go to RESULTS_DIR, default $OUT when
# set (the device tool returns at most 8 files: these are 8), else benchmarks/results/gpu_check.
#
#   bash benchmarks/gpu_check.sh                         # on the GPU machine, from anywhere
#   GPU_CHECK_BUDGET=300 bash benchmarks/gpu_check.sh    # a shorter run (the benchmarks get what is left)
#   GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh    # smoke run of this script on a CPU (tiny benchmarks)
#
# Exit status: 0 when every phase passed, 1 when a test, a check or a benchmark failed, 2 when the set-up failed.
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
BUDGET="${GPU_CHECK_BUDGET:-540}"
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
RESULTS="${RESULTS_DIR:-${OUT:-$ROOT/benchmarks/results/gpu_check}}"
WHEELS="${WHEELS:-$ROOT/.whl}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/seesr-gpu-check.XXXXXX")"
SITE="$WORK/site"
mkdir -p "$RESULTS" "$SITE"
LOG="$RESULTS/gpu_check.log"
SUMMARY="$RESULTS/summary.tsv"
: >"$LOG"
printf 'phase\tstatus\tseconds\tdetail\n' >"$SUMMARY"
exec > >(tee -a "$LOG") 2>&1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
FAILED=0

left() { echo $((BUDGET - SECONDS)); }
note() { printf '[%4ds] %s\n' "$SECONDS" "$*"; }
record() { # phase status started-at detail: one line of summary.tsv, written at once
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$((SECONDS - $3))" "$4" >>"$SUMMARY"
    note "$1: $2 $4"
    if [ "$2" != ok ]; then FAILED=1; fi
}
usable_python() { # a CPU smoke run takes any torch; otherwise torch must see a CUDA GPU
    "$1" -c 'import sys, torch; sys.exit(0 if sys.argv[1] == "cpu" or torch.cuda.is_available() else 1)' \
        "$DEVICE" 2>/dev/null
}
figures() { # json-file python-expression-of-d: one line of figures (empty when the file is unreadable)
    "$PY" -c 'import json, sys; d = json.load(open(sys.argv[1])); print(eval(sys.argv[2], {"d": d}))' "$1" "$2" \
        2>/dev/null
}

# 0. Python with CUDA torch, seesr from this checkout ---------------------------------------------------------------
start=$SECONDS
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    for candidate in "$ROOT/.venv/bin/python" python3 python; do
        if command -v "$candidate" >/dev/null 2>&1 && usable_python "$candidate"; then PY="$candidate"; break; fi
    done
fi
if [ -z "$PY" ] || ! usable_python "$PY"; then
    record setup failed "$start" "no Python whose torch sees a CUDA GPU (set PYTHON=/path/to/python)"
    exit 2
fi
note "python: $(command -v "$PY"), $("$PY" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__)')"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    note "installing the carried wheels: $(cd "$WHEELS" && echo *.whl)"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl ||
        note "warning: the carried wheels did not install"
fi
leftovers=()  # what the in-tree build leaves behind that was not there before
for folder in "$ROOT/build" "$ROOT/src/seesr.egg-info"; do [ -e "$folder" ] || leftovers+=("$folder"); done
if "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target "$SITE" "$ROOT" \
    >"$WORK/install.log" 2>&1; then
    note "seesr installed from $ROOT into $SITE"
else
    note "warning: building seesr from the checkout failed; running it from src/ instead:"
    tail -n 5 "$WORK/install.log"
    export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
fi
rm -rf ${leftovers[@]+"${leftovers[@]}"}
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
missing="$("$PY" -c 'import importlib.util as u, sys; print(*(n for n in sys.argv[1:] if u.find_spec(n) is None))' \
    seesr torch diffusers transformers accelerate safetensors huggingface_hub timm numpy PIL tqdm yaml pytest \
    pytest_timeout)"
if [ -n "$missing" ]; then
    record setup failed "$start" "missing Python packages: $missing (carry their wheels in $WHEELS: benchmarks/README.md)"
    exit 2
fi
record setup ok "$start" "$("$PY" -c 'import seesr; print("seesr", seesr.__version__, "from", seesr.__file__)')"

# 1. Environment ----------------------------------------------------------------------------------------------------
start=$SECONDS
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm,clocks.max.sm --format=csv || true
if timeout --kill-after=10 90 "$PY" -m seesr doctor --device "$DEVICE" --json >"$RESULTS/doctor.json"; then
    record environment ok "$start" "$(figures "$RESULTS/doctor.json" \
        "'%s, %s GiB free, torch %s' % (d['device'].get('name'), d['device'].get('free_gib'), d['versions']['torch'])")"
else
    record environment failed "$start" "seesr doctor did not run"
fi

# 2. pytest -m gpu --------------------------------------------------------------------------------------------------
start=$SECONDS
mapfile -t gpu_tests < <(grep -rlE --include='test_*.py' 'mark\.gpu|pytestmark = GPU' tests | sort)
limit=$(($(left) > 360 ? 180 : $(left) / 3))
limit=$((limit < 30 ? 30 : limit))
note "pytest -m gpu on ${#gpu_tests[@]} files (at most $limit s)"
timeout --kill-after=10 "$limit" "$PY" -m pytest -m gpu -p no:cacheprovider -s -rA --timeout 120 \
    --junitxml "$RESULTS/pytest_gpu.xml" "${gpu_tests[@]}"
status=$?
tally="$("$PY" -c '
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suite = root if root.tag == "testsuite" else root[0]
print(", ".join(f"{key} {suite.get(key)}" for key in ("tests", "failures", "errors", "skipped")))
' "$RESULTS/pytest_gpu.xml" 2>/dev/null || echo "no report")"
if [ "$status" = 0 ] && [ "$DEVICE" != cpu ] && ! grep -q '^.*skipped 0$' <<<"$tally"; then
    status=skipped  # on a GPU machine a skipped GPU test is work not done, never a pass
fi
case $status in
    0) record pytest-gpu ok "$start" "$tally" ;;
    skipped) record pytest-gpu incomplete "$start" "$tally (skipped on a GPU machine: see gpu_check.log)" ;;
    124 | 137) record pytest-gpu timeout "$start" "$tally" ;;
    *) record pytest-gpu failed "$start" "exit $status: $tally" ;;
esac

# 3. seesr doctor --check -------------------------------------------------------------------------------------------
start=$SECONDS
timeout --kill-after=10 150 "$PY" -m seesr doctor --check --device "$DEVICE" --json >"$WORK/doctor_check.json"
status=$?
"$PY" -c 'import json, sys; print(json.dumps(json.load(open(sys.argv[1]))["check"], indent=2))' \
    "$WORK/doctor_check.json" >"$RESULTS/doctor_check.json" 2>/dev/null ||
    cp "$WORK/doctor_check.json" "$RESULTS/doctor_check.json"
cat "$RESULTS/doctor_check.json"
line="$(figures "$RESULTS/doctor_check.json" "'PSNR %s dB (bound %s), max diff %s, exact %s s/step, fast %s s/step' % \
    (d['fast']['psnr_db'], d['min_psnr_db'], d['fast']['max_abs_diff'], d['exact']['s_per_step'], d['fast']['s_per_step'])")"
case $status in
    0) record doctor-check ok "$start" "$line" ;;
    124 | 137) record doctor-check timeout "$start" "" ;;
    *) record doctor-check failed "$start" "exit $status: ${line:-$(figures "$RESULTS/doctor_check.json" "d.get('error')")}" ;;
esac

# 4. Benchmarks against the time left -------------------------------------------------------------------------------
start=$SECONDS
deadline=$(($(left) - 25))
if [ "$deadline" -lt 60 ]; then
    record benchmarks skipped "$start" "only $(left) s left"
else
    note "benchmarks/run_all.py with a $deadline s deadline"
    tiny=()
    if [ "$DEVICE" = cpu ]; then tiny=(--tiny --skip inference-compile); fi
    timeout --kill-after=10 $((deadline + 15)) "$PY" benchmarks/run_all.py --deadline "$deadline" --device "$DEVICE" \
        ${tiny[@]+"${tiny[@]}"} --output-dir "$WORK/bench" --copy-to "$RESULTS"
    status=$?
    case $status in
        0) record benchmarks ok "$start" "see RESULTS.md" ;;
        124 | 137) record benchmarks timeout "$start" "partial results in results.json" ;;
        *) record benchmarks failed "$start" "exit $status: a job failed (RESULTS.md)" ;;
    esac
fi

note "done in $SECONDS s; results in $RESULTS"
cat "$SUMMARY"
exit "$FAILED"
