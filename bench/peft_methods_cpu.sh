#!/usr/bin/env bash
# Every peft method on the MiniLM SST-2 workload, one after the other in one command (nothing
# else should run): 60 optimizer steps of batch 32 from the experiment's own config, then the
# full 872-row validation split; prints one table row per method (train and eval samples/s, peak
# resident memory during training). Accuracy needs the full runs (`peftkit reproduce NAME`).
#
#   cargo build --release -p peftkit && bash bench/peft_methods_cpu.sh [OUT_DIR]
#
# Run it through `cargo xtask env` (e.g. `eval "$(cargo xtask env)"` first) so libtorch and
# PEFTKIT_MINILM_DIR are set. OUT_DIR (default: a new temporary directory) receives the runs.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-$(mktemp -d)}"
mkdir -p "$out"
bin=target/release/peftkit
echo "| method | trainable | train samples/s | eval samples/s | peak RSS in training |"
echo "|---|---:|---:|---:|---:|"
for name in lora dora ia3 adalora pissa prefix prompt ptuning qlora; do
  exp="minilm-sst2-$name"
  extra=()
  # AdaLoRA's schedule must fit the run's steps.
  if [ "$name" = adalora ]; then
    extra=(--set adapter.total_step=60 --set adapter.tinit=6 --set adapter.tfinal=12 --set adapter.deltaT=6)
  fi
  "$bin" reproduce "$exp" --device cpu --output "$out/$exp" \
    --set train.max_steps=60 --set train.eval_strategy=no --set train.save_strategy=no \
    --set train.load_best_model_at_end=false "${extra[@]}" > "$out/$exp.log" 2>&1
  python3 - "$out/$exp/report.json" "$name" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); t = r["train"]; f = r["final_results"][0]
print(f"| {sys.argv[2]} | {r['trainable_params']:,} | {t['train_samples_per_second']:.1f} | "
      f"{f['samples_per_second']:.0f} | {t['memory']['peak_bytes'] / 2**30:.2f} GiB |")
PY
done
