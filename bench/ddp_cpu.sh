#!/usr/bin/env bash
# Data-parallel scaling on this machine, in one command (nothing else should run), side by side:
#
#  1. The MiniLM SST-2 workload (LoRA, then full fine-tuning), 40 optimizer steps of a global
#     batch of 32: one process with 1 thread, one process with 2 threads (the whole machine), and
#     2 ranks of 1 thread each over Gloo (`peftkit launch`, 16 rows per rank). Prints samples/s
#     and the share of the step rank 0 spent in the gradient all-reduce.
#  2. GPT-2 at its real shape (`model.init = "random"`), LoRA vs full fine-tuning, 2 ranks, 3
#     steps: the bytes all-reduced per step and the all-reduce's time.
#
#   cargo build --release -p peftkit && bash bench/ddp_cpu.sh [OUT_DIR]
#
# Run it through `cargo xtask env` (e.g. `eval "$(cargo xtask env)"` first) so libtorch,
# HF_HOME and PEFTKIT_MINILM_DIR are set. OUT_DIR (default: a new temporary directory) gets the
# runs.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-$(mktemp -d)}"
mkdir -p "$out"
bin=target/release/peftkit
common=(--device cpu --quiet --set train.eval_strategy=no --set train.save_strategy=no
  --set train.load_best_model_at_end=false --set train.logging_steps=10 --set train.warmup_ratio=0)

row() { # report.json, label
  python3 - "$1" "$2" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))["train"]
d = t.get("distributed")
share = f"{100 * d['allreduce_seconds'] / t['train_runtime']:.1f}%" if d else "–"
mib = f"{d['allreduce_bytes_per_step'] / 2**20:.2f}" if d else "–"
print(f"| {sys.argv[2]} | {t['train_samples_per_second']:.1f} | {mib} | {share} |")
PY
}

echo "## MiniLM SST-2, 40 steps of a global batch of 32"
echo
echo "| run | train samples/s | MiB all-reduced per step | all-reduce share of the step (rank 0) |"
echo "|---|---:|---:|---:|"
for method in lora full; do
  cfg="configs/minilm-sst2-$method.toml"
  steps=(--set train.max_steps=40 --set data.train_subset=1280)
  OMP_NUM_THREADS=1 "$bin" train --config "$cfg" --output "$out/$method-1x1" "${common[@]}" "${steps[@]}" \
    --set train.per_device_train_batch_size=32 > "$out/$method-1x1.log" 2>&1
  row "$out/$method-1x1/report.json" "$method, 1 process × 1 thread"
  OMP_NUM_THREADS=2 "$bin" train --config "$cfg" --output "$out/$method-1x2" "${common[@]}" "${steps[@]}" \
    --set train.per_device_train_batch_size=32 > "$out/$method-1x2.log" 2>&1
  row "$out/$method-1x2/report.json" "$method, 1 process × 2 threads"
  "$bin" launch --nproc-per-node 2 -- train --config "$cfg" --output "$out/$method-2x1" "${common[@]}" "${steps[@]}" \
    --set train.per_device_train_batch_size=16 > "$out/$method-2x1.log" 2>&1
  row "$out/$method-2x1/report.json" "$method, 2 ranks × 1 thread (Gloo)"
done

echo
echo "## GPT-2 (124M, random init at the real shape), 2 ranks, 3 steps of 2 × 8 rows"
echo
echo "| run | train samples/s | MiB all-reduced per step | all-reduce share of the step (rank 0) |"
echo "|---|---:|---:|---:|"
for method in lora full; do
  "$bin" launch --nproc-per-node 2 -- train --config "configs/sst2-$method.toml" --output "$out/gpt2-$method" \
    "${common[@]}" --set model.init=random --set train.max_steps=3 --set data.train_subset=64 \
    --set data.eval_subset=32 --set train.per_device_train_batch_size=8 > "$out/gpt2-$method.log" 2>&1
  row "$out/gpt2-$method/report.json" "gpt2 $method"
done
echo
echo "runs in $out"
