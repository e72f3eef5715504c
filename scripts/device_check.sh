#!/usr/bin/env bash
# The course's GPU-only checks, on a lent GPU machine (developers' tool; CI never has a GPU).
#
# Prepare here with `.venv/bin/python scripts/device_pack.py` (it prints the device calls); the
# last call runs, in the repository root there:
#
#   bash scripts/device_check.sh all            # = setup nc smol lab3 lab4 lab2 lab1
#   bash scripts/device_check.sh setup lab2     # any stages, in the order given (setup first)
#
# Stages (each under its own time limit, all inside DEADLINE seconds, default 560; a failed stage
# does not stop the next; the logs (one file) and executed notebooks go to $OUT, or ./device-out):
#   setup  install .device/whl into /tmp/site (--no-deps: the machine's PyTorch and scientific stack
#          stay), unpack .device/data.tar and the two halves of SmolLM2's file into /tmp/lsdata and
#          check its SHA-256; versions, the GPU, `labsupport doctor`
#   nc     benchmarks/neural_cleanse_speed.py: batched vs label by label (issue 8: >= 5x on a GPU)
#   smol   tests/test_llm_smol.py's GPU efficacy test (issue 7: ASR >= 90 % at 1 % poisons)
#   labN   the Lab N solution notebook in the gpu profile, with its cell times
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/device-out}
mkdir -p "$OUT"
DEADLINE=${DEADLINE:-560}
START=$SECONDS
export PYTHONPATH=/tmp/site:$ROOT PYTHONUNBUFFERED=1
export LABSUPPORT_DATA=/tmp/lsdata LABSUPPORT_MODELS=/tmp/lsmodels
PY=${PYTHON:-python3}
PROFILE=${PROFILE:-gpu}   # the labs' profile (quick: to try this script on a CPU)

# run NAME LIMIT CMD...: CMD under min(LIMIT, what is left of DEADLINE); its whole output is added to
# $OUT/logs.txt (one file: a call brings back at most 8), its last lines printed
run() {
    local name=$1 limit=$2; shift 2
    local left=$((DEADLINE - (SECONDS - START) - 5))
    ((left < limit)) && limit=$left
    if ((limit < 20)); then echo "== $name: skipped, ${left}s left of the ${DEADLINE}s deadline"; return; fi
    echo "== $name (limit ${limit}s)"
    local t0=$SECONDS
    timeout "$limit" "$@" > "/tmp/device-$name.log" 2>&1
    local rc=$?
    { echo "===== $name: rc=$rc"; cat "/tmp/device-$name.log"; } >> "$OUT/logs.txt"
    tail -n 25 "/tmp/device-$name.log"
    echo "== $name: rc=$rc in $((SECONDS - t0))s$([[ $rc == 124 ]] && echo ' (TIMED OUT)')"
}

setup() {
    mkdir -p /tmp/site /tmp/lsdata/FashionMNIST/raw /tmp/lsdata/smollm2 /tmp/lsmodels
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .device/whl/*.whl || return 1
    tar -xf .device/data.tar -C /tmp/lsdata || return 1
    for f in /tmp/lsdata/fashion-mnist/*.gz; do gunzip -c "$f" > "/tmp/lsdata/FashionMNIST/raw/$(basename "$f" .gz)"; done
    if [[ -f .device/gguf.1 && -f .device/gguf.2 ]]; then
        cat .device/gguf.1 .device/gguf.2 > /tmp/lsdata/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
        echo "$(cut -d' ' -f1 .device/gguf.sha256)  /tmp/lsdata/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" \
            | sha256sum -c - || return 1
    else
        echo "SmolLM2's file is not here (the two calls that carry .device/gguf.1 and .device/gguf.2 come first)"
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$PY" -c "import sys, torch, transformers; print(sys.version.split()[0], 'torch', torch.__version__,
'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__)"
    "$PY" -m labsupport doctor
}

lab() {   # lab N: the solution notebook in the gpu profile, executed copy to $OUT, its 15 slowest cells
    local nb
    nb=$(ls solutions/lab"$1"_*.ipynb) || return 1
    "$PY" -m labsupport run solutions "$nb" --profile "$PROFILE" --out "$OUT" --durations 15
}

stages=("$@")
[[ ${#stages[@]} == 0 || ${stages[0]} == all ]] && stages=(setup nc smol lab3 lab4 lab2 lab1)
for s in "${stages[@]}"; do
    case $s in
        setup) run setup 180 bash -c "$(declare -f setup); PY=$PY; setup" ;;
        nc) run nc 150 "$PY" benchmarks/neural_cleanse_speed.py ;;
        smol) run smol 240 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_llm_smol.py \
                  -k "learns_the_trigger" ;;
        lab[1-4]) run "$s" 300 bash -c "$(declare -f lab); PY=$PY; OUT=$OUT; PROFILE=$PROFILE; lab ${s#lab}" ;;
        *) echo "unknown stage $s (setup nc smol lab1 lab2 lab3 lab4 all)"; exit 2 ;;
    esac
done
echo "== done in $((SECONDS - START))s"
