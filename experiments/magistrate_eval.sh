#!/usr/bin/env bash
# The Magistrate's evaluation: meta-train the Magistrate on a population of MLP shapes (three agent
# seeds), then evaluate each frozen policy on fresh host seeds (1000-1007) at 95% sparsity next
# to dense, GMP and RigL: on a training shape (64,64), an unseen width (96,96), an unseen depth
# (32,32,32,32) and the default host ((256,256), 3000 steps).
#   bash experiments/magistrate_eval.sh OUTDIR [--drop_features=G]
# Finished steps are skipped (results in OUTDIR/eval/*/summary.json). Compare with
#   python -m experiments.compare --pool --base OUTDIR/eval/base_64-64:gmp \
#     --other OUTDIR/eval/mag_s0_64-64:magistrate --other ... (s1, s2)
set -euo pipefail
out=${1:?usage: bash experiments/magistrate_eval.sh OUTDIR [--drop_features=G]}
drop=${2:-}
g=${drop#--drop_features=}
tag=${g:+_no$g}
cd "$(dirname "$0")/.."
done_() { grep -q seed_list "$out/eval/$1/summary.json" 2>/dev/null; }
for s in 0 1 2; do
  [ -d "$out/agent_pop${tag}_s$s/agent" ] || python -m experiments.train_agent \
    --workdir "$out/agent_pop${tag}_s$s" --iterations 150 --hosts 4 --seed $s \
    --config.population="64,64;32,32,32;128;48,48" ${drop:+"$drop"}
done
for shape in "(64,64)" "(96,96)" "(32,32,32,32)" default; do
  t=$(echo "$shape" | tr -d '() ' | tr ',' '-')
  if [ "$shape" = default ]; then args=(--config.prune.sparsity=0.95)
  else args=(--config experiments/configs/agent.py --config.host.width="$shape"); fi
  [ -n "$tag" ] || done_ "base_$t" || python -m experiments.train --workdir "$out/eval/base_$t" \
    "${args[@]}" --config.compare=dense,gmp,rigl --config.seeds=8 --config.seed_offset=1000
  for s in 0 1 2; do
    done_ "mag${tag}_s${s}_$t" || python -m experiments.train \
      --workdir "$out/eval/mag${tag}_s${s}_$t" "${args[@]}" --config.compare=magistrate \
      --config.controllers.magistrate.policy="$out/agent_pop${tag}_s$s/agent" \
      --config.controllers.magistrate.drop_features="$g" --config.seeds=8 --config.seed_offset=1000
  done
done
