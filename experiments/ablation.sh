#!/usr/bin/env bash
# Observation-group ablation of the Magistrate: for each group, meta-train an agent that does
# not see it, then evaluate the frozen policy on fresh seeds (1000-1007).
#   bash experiments/ablation.sh OUTDIR [GROUPS...]   (default groups: gsnr fisher flip age)
set -euo pipefail
out=${1:?usage: bash experiments/ablation.sh OUTDIR [GROUPS...]}
shift
groups=${*:-gsnr fisher flip age}
cd "$(dirname "$0")/.."
for g in $groups; do
  python -m experiments.train_agent --workdir "$out/agent_no_$g" --iterations 100 --hosts 8 \
    --drop_features="$g"
  python -m experiments.train --workdir "$out/eval_no_$g" --config experiments/configs/agent.py \
    --config.compare=magistrate --config.controllers.magistrate.policy="$out/agent_no_$g/agent" \
    --config.controllers.magistrate.drop_features="$g" --config.seeds=8 --config.seed_offset=1000 \
    --config.run.checkpoint=False
done
