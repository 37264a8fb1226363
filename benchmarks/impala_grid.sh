#!/usr/bin/env bash
# Issue 20's grid: DQN with the Impala ResNet on MinAtar at the paper's settings (Obando-Ceron et
# al. 2024: widths x1/x3/x5, GMP to 95% ERK from 20% to 80% of training with a mask update every
# 1000 updates; Sokar & Castro 2025's GAP control), 5 seeds per cell vmapped in one program.
# Resumable: run it again with the same WORKDIR and finished cells are skipped.
#
#   bash benchmarks/impala_grid.sh WORKDIR            # the grid (GPU: pip install -e ".[lab,cuda]")
#   TINY=1 bash benchmarks/impala_grid.sh WORKDIR     # a few minutes on a CPU: checks the pipeline
#
# Environment overrides: STEPS (env steps per run, default 2000000), WIDTHS (default 1,3,5),
# SEEDS (default 5), ARMS (default dense,gmp,dense_gap,gmp_gap,magistrate), GAMES.
set -euo pipefail
WORKDIR=${1:?usage: benchmarks/impala_grid.sh WORKDIR}
STEPS=${STEPS:-2000000}
WIDTHS=${WIDTHS:-1,3,5}
SEEDS=${SEEDS:-5}
ARMS=${ARMS:-dense,gmp,dense_gap,gmp_gap,magistrate}
GAMES=${GAMES:-Breakout-MinAtar,SpaceInvaders-MinAtar,Freeway-MinAtar}
EXTRA=()
if [[ "${TINY:-0}" == "1" ]]; then
  STEPS=3000 WIDTHS=1 SEEDS=2 ARMS=dense,gmp,dense_gap GAMES=Breakout-MinAtar
  EXTRA=(--config.dqn.prune_every=50 --config.dqn.learning_starts=500 --config.chunk=2)
fi
python -m experiments.minatar_sweep --workdir "$WORKDIR" --config=experiments/configs/minatar.py \
  --config.games="$GAMES" --config.arms="$ARMS" --config.widths="$WIDTHS" \
  --config.seeds="$SEEDS" --config.sparsities=0.95 --config.dqn.network=impala \
  --config.dqn.total_env_steps="$STEPS" --config.dqn.prune_every=1000 \
  --config.dqn.prune_start=0.2 --config.dqn.prune_end=0.8 --config.dqn.distribution=erk \
  "${EXTRA[@]}"
