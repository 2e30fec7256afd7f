#!/usr/bin/env bash
# The Omniglot budget runs furthest from their papers, side by side on one GPU machine.
#
#   OUT=/tmp/gpu-out MINUTES=7 DEADLINE=560 bash benchmarks/device_runs.sh
#
# Run from the repository root. Each run is an ordinary benchmarks/omniglot_budget.py or
# omniglot_sequence.py command (listed in RUNS below, at MINUTES of training each), so it records
# its accuracy line in benchmarks/results/ as on the CPU, with the GPU in its budget
# ("device"); the Trainer's accelerator "auto" takes the GPU. The runs share the GPU (one
# process each, time-sliced) and one CPU core each.
#
# Reads Omniglot's images_background.zip and images_evaluation.zip from $DATA/omniglot
# (default .device/data), decoded once into $CACHE before the runs start. Where .device/wheels
# holds wheels (lit-meta's own and what the machine's Python lacks, e.g. jsonargparse,
# docstring_parser, typeshed_client), they are installed into /tmp/site first; otherwise
# lit-meta must be installed. The commit the copy was made from is read from .device/commit and
# recorded as BENCHMARK_COPIED_FROM_COMMIT (results_log.py): the machine's copy of the checkout
# may carry an older .git than its tree.
#
# Runs still going DEADLINE seconds after the start are stopped, so that what finished is packed
# in time. Leaves in $OUT: new_<stem>.jsonl (the result lines the runs appended to
# benchmarks/results/<stem>.jsonl), runs.tar.gz (each run's output and Lightning logs, no
# checkpoints) and gpu.log (nvidia-smi every 30 s).
set -u
set -m  # each background run in its own process group, so a stop reaches its lit-meta child too

START=$SECONDS
OUT=${OUT:-/tmp/device-runs-out}
DATA=${DATA:-.device/data}
CACHE=${CACHE:-/tmp/lit-meta-omniglot-cache}
MINUTES=${MINUTES:-7}
DEADLINE=${DEADLINE:-560}
WORK=${WORK:-/tmp/device-runs}
mkdir -p "$OUT" "$WORK/logs"

if compgen -G ".device/wheels/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .device/wheels/*.whl || exit 1
    export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH
fi
if [ -f .device/commit ]; then export BENCHMARK_COPIED_FROM_COMMIT=$(cat .device/commit); fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, lightning, lit_meta; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
'lightning', lightning.__version__, 'lit_meta', lit_meta.__file__)" || exit 1

# Many small processes share the GPU better through MPS (one context, kernels of several processes
# at once) than time-sliced; where the daemon does not start or a CUDA call fails under it, without.
if command -v nvidia-cuda-mps-control >/dev/null && nvidia-cuda-mps-control -d; then
    if timeout 60 python3 -c "import torch; torch.ones(1, device='cuda').sum().item()"; then
        echo "MPS on"
    else
        echo quit | nvidia-cuda-mps-control
        echo "MPS off: a CUDA call failed under it"
    fi
fi

# Decode Omniglot once per image size (28 px: the configs; 20 px: MANN) before the runs read it.
for size in 28 20; do
    python3 -c "from lit_meta.data.datasets.omniglot import Omniglot; \
Omniglot('$DATA', image_size=$size, cache_dir='$CACHE', download=False).characters" &
done
wait
ls -la "$CACHE"

budget="python3 benchmarks/omniglot_budget.py --threads 1 --data $DATA --cache $CACHE --minutes $MINUTES --val-episodes 100"
sequence="python3 benchmarks/omniglot_sequence.py --threads 1 --data $DATA --cache $CACHE --minutes $MINUTES"
RUNS=(
    "maml5w1s|$budget --learners maml --settings 5w1s --val-every 250 --out $WORK/maml5w1s"
    "fomaml5w1s|$budget --learners fomaml --settings 5w1s --val-every 250 --out $WORK/fomaml5w1s"
    "metasgd5w1s|$budget --learners meta_sgd --settings 5w1s --val-every 250 --out $WORK/metasgd5w1s"
    "mamlpp5w1s|$budget --learners maml_plus_plus --settings 5w1s --val-every 250 --out $WORK/mamlpp5w1s"
    "maml5w5s|$budget --learners maml --settings 5w5s --val-every 250 --out $WORK/maml5w5s"
    "relation5w1s|$budget --learners relation_net --settings 5w1s --val-every 1000 --out $WORK/relation5w1s"
    "relation20w1s|$budget --learners relation_net --settings 20w1s --val-every 1000 --out $WORK/relation20w1s"
    "anil20w1s|$budget --learners anil --settings 20w1s --val-every 250 --out $WORK/anil20w1s"
    "metanet5w1s|$budget --learners metanet --settings 5w1s --val-every 500 --out $WORK/metanet5w1s"
    "snail5w1s|$sequence --config configs/snail/omniglot_5w1s.yaml --out $WORK/snail5w1s"
    "mann5w10s|$sequence --config configs/mann/omniglot_5w10s.yaml --out $WORK/mann5w10s"
)
for f in benchmarks/results/*.jsonl; do echo "$f $(wc -l <"$f")"; done >"$WORK/lines_before"
declare -A PIDS
for run in "${RUNS[@]}"; do
    name=${run%%|*}
    command=${run#*|}
    mkdir -p "$WORK/$name"
    echo "start $name: $command"
    $command >"$WORK/logs/$name.log" 2>&1 &
    PIDS[$name]=$!
done

alive() {
    local n=0
    for name in "${!PIDS[@]}"; do kill -0 "${PIDS[$name]}" 2>/dev/null && n=$((n + 1)); done
    echo $n
}
next_report=0
while [ "$(alive)" -gt 0 ] && [ $((SECONDS - START)) -lt "$DEADLINE" ]; do
    if [ $((SECONDS - START)) -ge $next_report ]; then
        echo "t=$((SECONDS - START))s running=$(alive) gpu: $(nvidia-smi --query-gpu=utilization.gpu,memory.used \
            --format=csv,noheader)" | tee -a "$OUT/gpu.log"
        next_report=$((next_report + 30))
    fi
    sleep 5
done
for name in "${!PIDS[@]}"; do
    if kill -0 "${PIDS[$name]}" 2>/dev/null; then
        echo "deadline: stopping $name"
        kill -- -"${PIDS[$name]}" 2>/dev/null
    fi
done
sleep 2
for name in "${!PIDS[@]}"; do
    wait "${PIDS[$name]}"
    echo "== $name: exit $? =="
    tail -n 8 "$WORK/logs/$name.log"
done

# The lines each result file gained (by count: the runs only append).
for f in benchmarks/results/*.jsonl; do
    before=$(awk -v f="$f" '$1 == f {print $2}' "$WORK/lines_before")
    new=$(tail -n +$((${before:-0} + 1)) "$f")
    if [ -n "$new" ]; then echo "$new" >"$OUT/new_$(basename "$f")"; fi
done
tar -czf "$OUT/runs.tar.gz" --exclude='*.ckpt' -C "$WORK" .
ls -la "$OUT"
echo "done in $((SECONDS - START)) s"
