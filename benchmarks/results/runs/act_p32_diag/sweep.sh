#!/bin/bash
# 32-bit parity, random layout: the halting bias init and τ, lr 1e-3, 50,000 steps, one thread, seed 0.
# Run from the repository root: `bash sweep.sh A` and `bash sweep.sh B` side by side (one core each).
# Kept here: b1_t1e-4_s0 and b-1_t1e-3_s0 (finished); b-2_t1e-3_s0 and b-1_t1e-4_s0 were stopped at
# 14,000 / 30,000 steps to free the cores for the 64-bit row act/parity64_lr1e-3_tau1e-4_act_rnn
# (their metrics.jsonl only); the seed-1 runs were not started. Commit f3ed171.
run() { # name, halting bias init, τ, seed
  out=runs/p32/$1_s$4
  [ -f "$out/result.json" ] && return
  adaptrnn train --config configs/act/parity_act_rnn_t1e-3.yaml --seed "$4" --steps 50000 --out "$out" \
    --set size=32 --set lr=1e-3 --set threads=1 --set eval_every=2000 --set log_every=500 \
    --set halting_bias_init="$2" --set time_penalty="$3" $([ -d "$out" ] && echo --resume)
}
if [ "$1" = A ]; then
  run b-1_t1e-3 -1 1e-3 0
  run b-2_t1e-3 -2 1e-3 0
  run b-1_t1e-3 -1 1e-3 1
else
  run b1_t1e-4 1 1e-4 0
  run b-1_t1e-4 -1 1e-4 0
  run b1_t1e-4 1 1e-4 1
fi
