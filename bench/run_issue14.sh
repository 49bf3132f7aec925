#!/usr/bin/env bash
# Re-run every figure of issue 14 (docs/performance.md, "Against DESIGN §8 (round 2)")
# in a quiet window, RUNS times each, and redraw the plots from the JSON files.
#
#   bench/run_issue14.sh                 # 3 runs, JSON in docs/perf/, plots in docs/
#   RUNS=1 OUT=/tmp/perf bench/run_issue14.sh
#   BASE=main bench/run_issue14.sh       # also start-up of BASE (a git ref), alternating
#
# Each bench prints the 1-minute load average beside its figures and stores it in its
# JSON ("load_1min"); start only when the load is low (< 2.5 on the 2-core machine).
# Needs torch and matplotlib (pip install -e '.[dev,torch,plot]'). About 25-35 min for
# 3 runs on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
OUT=${OUT:-docs/perf}
PLOTS=${PLOTS:-docs}
HERE=$PWD
export PYTHONPATH=$HERE
mkdir -p "$OUT"

base_tree=""
if [[ -n "${BASE:-}" ]]; then
  base_tree=$(mktemp -d /tmp/forge_sc_base.XXXXXX)
  git worktree add --detach "$base_tree" "$BASE" >/dev/null
  trap 'git worktree remove --force "$base_tree"' EXIT
fi

load() { cut -d' ' -f1 /proc/loadavg; }

for i in $(seq 1 "$RUNS"); do
  echo "=== run $i of $RUNS (load $(load))"
  echo "--- batching on Monarch: rows as lists, tensor rows (a list of tensors), stacked"
  timeout 1200 python bench/bench_batching.py --payload list tensor stacked \
    --sizes 1 2 4 8 16 32 --json "$OUT/batching_monarch_$i.json"
  echo "--- a batch of 32 tensor rows on the wire: one encoding, one per row, lists"
  timeout 300 python bench/bench_rows.py --json "$OUT/rows_$i.json"
  echo "--- 100 MB tensor to a same-host replica and back"
  timeout 900 python bench/bench_payload.py --json "$OUT/payload_$i.json"
  echo "--- SIGKILL -> reroute and capacity, 4 replicas, 64 callers, 20 kills, spare_replicas=1"
  timeout 1200 python bench/bench_reroute.py --backend asyncio --replicas 4 --callers 64 \
    --kills 20 --spares 1 --json "$OUT/reroute_spares_$i.json"
  echo "--- the same without spares"
  timeout 1200 python bench/bench_reroute.py --backend asyncio --replicas 4 --callers 64 \
    --kills 20 --json "$OUT/reroute_nospares_$i.json"
  echo "--- start-up, 1 / 4 / 8 replicas"
  timeout 900 python bench/bench_startup.py --replicas 1 4 8 --reps 3 \
    --json "$OUT/startup_new_$i.json"
  if [[ -n "$base_tree" ]]; then
    echo "--- start-up of $BASE (same bench, its forge_sc)"
    PYTHONPATH=$base_tree timeout 900 python bench/bench_startup.py --replicas 1 4 8 \
      --reps 3 --json "$OUT/startup_base_$i.json"
  fi
done

echo "=== plots (run 1) into $PLOTS"
python bench/plot_performance.py --data "$OUT" --run 1 --out "$PLOTS"
echo "done (load $(load)); figures: $OUT/*.json"
