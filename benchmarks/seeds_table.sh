#!/usr/bin/env bash
# The SFT / DPO / PPO / RTO table over seeds at the default settings.
# Per seed: a full reward=token run, then reward=sentence PPO + eval reusing that run's SFT, RM and DPO
# (identical upstream stages, so the two rewards differ only in PPO). Then the summary.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/seeds_table}
SEEDS=${SEEDS:-"0 1 2"}
for seed in $SEEDS; do
  tok="$OUT/seed$seed/token"; sen="$OUT/seed$seed/sentence"
  [ -f "$tok/metrics.json" ] || python -m rto.main reward=token seed=$seed print_config=false logger=csv hydra.run.dir="$tok" "${@:2}"
  ck="$tok/checkpoints"
  [ -f "$sen/metrics.json" ] || python -m rto.main reward=sentence seed=$seed print_config=false logger=csv hydra.run.dir="$sen" \
      sft.checkpoint="$ck/sft" rm.checkpoint="$ck/rm" dpo.checkpoint="$ck/dpo" "${@:2}"
done
python benchmarks/summarize_seeds.py "$OUT"
