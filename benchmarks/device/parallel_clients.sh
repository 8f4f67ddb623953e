#!/usr/bin/env bash
# issue 21, item 6 on a GPU: clients per second of stacked clients (simulation.parallel_clients)
# against one after another, MiniLM + LoRA on TREC-6 (random weights: see prepare.py).
#
# Here, once:   .venv/bin/python benchmarks/device/prepare.py    (writes .gpu/, git-ignored)
# There (the device tool's `run`, carry [".gpu"], timeout_s 600):
#               bash benchmarks/device/parallel_clients.sh
# Results come back under $OUT: parallel_clients.json (resolved configs inside) and log.
set -euo pipefail
kit=$(cd "${KIT:-.gpu}" && pwd)
out=${OUT:-benchmarks/results/device}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$kit"/wheels/*.whl
export PYTHONPATH="/tmp/site:$kit/site:$PWD/src" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # nothing outside the machine can be reached
{
    echo "kit made at $(cat "$kit/git_head")"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    python3 benchmarks/device/random_model.py "$kit/minilm" /tmp/minilm
    # TREC-6's whole training pool over 256 clients (about 17 examples each), 64 a round;
    # stacks of 8, 32 and 64 against sequential
    python3 benchmarks/parallel_clients.py --rounds "${ROUNDS:-4}" --threads 8 \
        --arms "${ARMS:-0,8,32,64}" --out "$out" \
        --set model.name=/tmp/minilm --set device="${DEVICE:-cuda}" --set data.max_train_examples=0 \
        --set data.max_test_examples=512 --set data.num_clients="${CLIENTS:-256}" \
        --set strategy.clients_per_round="${COHORT:-64}" "$@"
} 2>&1 | tee "$out/log"
