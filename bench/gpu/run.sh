#!/usr/bin/env bash
# One run on a lent GPU machine (issue 15 §4), from the folder `cargo xtask gpu-pack` builds:
#   1. `peftkit info --device cuda`;
#   2. the CUDA-path tests: the generic adapter suite's CUDA half (every method × model: CPU-equal
#      logits and gradients, checkpointing — QLoRA's recomputed 4-bit node —, fp16 loss scaling and
#      bf16 training, the allocator's statistics) and NCCL on one GPU;
#   3. the side by side: each row trained by peftkit and by HF Trainer + peft
#      (`hf_peft_throughput.py`) at the same settings, interleaved, then the QLoRA rows (peftkit
#      alone: bitsandbytes is not on that machine);
#      and the same training under `peftkit launch` over NCCL (one rank a GPU; issue 12);
#   4. model shapes (issue 16): a Llama-2-7B-shaped classifier under QLoRA (NF4 + double quant,
#      built in bf16) and under LoRA on an fp32 base, one row of 128 tokens with gradient
#      checkpointing; then a LoRA training step of each new family at base size (8 x 128);
#   5. `summary.py` → $OUT/results.md (the table BENCHMARKS.md quotes) and $OUT/results.jsonl.
# Usage (repository root): bash target/gpu-pack/run.sh [--dry-run] [--steps N] [--rows A,B] [--no-tests] [--no-shapes]
#   --dry-run: on this CPU, a few steps, tiny subsets, HF side in its --smoke mode if importable.
#   --rows: only these rows (names as in the table; `none` for none); --no-tests: skip step 2;
#   --no-shapes: skip step 4.
#   PEFTKIT_SDPA_DISABLE (a comma list of flash, mem_efficient, math, cudnn; default cudnn, as
#   peftkit's own default) forbids those attention kernels; where it names cudnn the HF side runs
#   with --sdpa-cudnn off too. PEFTKIT_SDPA_DISABLE= (empty) lets both sides use every kernel.
# Environment: OUT (default target/gpu-pack/out), TORCH_LIB (default: python3's torch/lib).
set -uo pipefail
PACK=$(cd "$(dirname "$0")" && pwd)
ROOT=$(pwd)
DRY=0
STEPS=200
ROWS=all
TESTS=1
SHAPES=1
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1; STEPS=3 ;;
        --steps) STEPS=$2; shift ;;
        --rows) ROWS=$2; shift ;;
        --no-tests) TESTS=0 ;;
        --no-shapes) SHAPES=0 ;;
        *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
OUT=${OUT:-$PACK/out}
# Run directories (adapters, checkpoints) stay outside OUT: the device tool brings back 8 files.
RUNS=$(mktemp -d)
mkdir -p "$OUT"
LOG="$OUT/log.txt"
exec > >(tee -a "$LOG") 2>&1
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }

# The machine's torch serves the binaries (they link libtorch by name; RUNPATH is the build's).
if [ -z "${TORCH_LIB:-}" ]; then
    TORCH_LIB=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null || true)
fi
[ -n "$TORCH_LIB" ] && export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
BIN=$(mktemp -d)
python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$PACK/bins.tar.xz" "$BIN" || exit 1
PEFTKIT="$BIN/bin/peftkit"
export HF_HOME="$PACK/hf-home" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export PEFTKIT_FIXTURES="$ROOT/data/fixtures"
DEVICE=cuda
[ $DRY = 1 ] && DEVICE=cpu
status=0

stamp "1/5 peftkit info --device $DEVICE"
"$PEFTKIT" info --device "$DEVICE" | tee "$OUT/info.txt" || status=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | tee -a "$OUT/info.txt"

if [ $TESTS = 1 ]; then
stamp "2/5 CUDA-path tests"
# Each test skips itself where no CUDA device is present (the dry run).
"$BIN/bin/adapter_suite" cuda_ --test-threads 1 2>&1 | tee "$OUT/tests.txt" | grep -v "^test .* ok$" || true
grep -q "test result: ok" "$OUT/tests.txt" || status=1
"$BIN/bin/collectives" nccl 2>&1 | tee -a "$OUT/tests.txt" | tail -3
[ "${PIPESTATUS[0]}" = 0 ] || status=1
fi

stamp "3/5 side by side ($STEPS steps a row)"
COMMON=(--set model.init="random" --set train.max_steps=$STEPS --set train.eval_strategy="no"
        --set train.save_strategy="no" --set train.load_best_model_at_end=false
        --set train.group_by_length=false --set train.weight_decay=0.0 --set train.seed=42)
if [ $DRY = 1 ]; then
    COMMON+=(--set data.train_subset=64 --set data.eval_subset=32 --set data.subset_mode="first")
fi
CPU_ONLY=()
# The dry run: fp32 (fp16 is CUDA-only) and 32 tokens a row, so that it ends in minutes.
[ $DRY = 1 ] && CPU_ONLY=(--set train.precision="fp32" --set data.max_length=32)
HF_ARGS=(--max-steps "$STEPS" --skip $(( STEPS / 8 )) --out "$OUT/hf.jsonl")
[ $DRY = 1 ] && HF_ARGS+=(--smoke --skip 1)
hf_ok=1
python3 -c 'import transformers, peft, pyarrow' 2>/dev/null || { hf_ok=0; echo "HF side skipped: transformers/peft/pyarrow not importable"; }

# Rows started after DEADLINE seconds are skipped, so that the summary is always written inside
# the device call's limit.
DEADLINE=${DEADLINE:-420}
[ $DRY = 1 ] && DEADLINE=100000
late() { [ $(( $(date +%s) - t0 )) -gt "$DEADLINE" ] && { echo "deadline: $1 skipped"; return 0; }; return 1; }
wanted() { [ "$ROWS" = all ] || [[ ",$ROWS," == *",$1,"* ]]; }
# peftkit forbids cuDNN attention unless PEFTKIT_SDPA_DISABLE says otherwise: the HF side alike.
case ",${PEFTKIT_SDPA_DISABLE-cudnn}," in *,cudnn,*) HF_ARGS+=(--sdpa-cudnn off) ;; esac
ours() { # ROW CONFIG SETS...
    local row=$1 cfg=$2; shift 2
    wanted "$row" || return 0
    late "peftkit $row" && return 0
    stamp "peftkit $row"
    rm -rf "$RUNS/$row"
    "$PEFTKIT" train --config "$ROOT/configs/$cfg.toml" --device "$DEVICE" --quiet \
        --output "$RUNS/$row" "${COMMON[@]}" "$@" "${CPU_ONLY[@]}" 2>&1 | tail -5
    [ "${PIPESTATUS[0]}" = 0 ] || { echo "peftkit $row FAILED"; status=1; }
}
theirs() { # HF_ROW
    [ $hf_ok = 1 ] || return 0
    wanted "$1" || return 0
    late "HF $1" && return 0
    stamp "HF $1"
    python3 "$PACK/hf_peft_throughput.py" --rows "$1" "${HF_ARGS[@]}" 2>&1 | grep -E "steady|eval|FAILED|Error" | tail -4
}

SST2=(--set train.learning_rate=3e-4 --set data.max_length=1024)
IMDB=(--set train.learning_rate=3e-4 --set data.padding="max_length" --set data.max_length=512)
[ $DRY = 1 ] || IMDB+=(--set data.eval_subset=2000 --set data.subset_mode="first")
ours sst2-lora sst2-lora "${SST2[@]}"
theirs sst2-lora
ours imdb-lora-512 imdb-lora "${IMDB[@]}"
theirs imdb-lora-512
ours imdb-qlora-512 imdb-qlora "${IMDB[@]}"
# fp16 is CUDA-only: the dry run keeps these rows in fp32 on the CPU (CPU_ONLY).
ours emotion-prefix-fp16 emotion-prefix --set train.learning_rate=1e-2
theirs emotion-prefix-fp16
ours sst2-lora-bf16 sst2-lora "${SST2[@]}" --set train.precision="bf16"
theirs sst2-lora-bf16
ours emotion-qlora-fp16 emotion-qlora
# Data-parallel over NCCL (Gloo in the dry run): one rank per GPU under `peftkit launch`, the same
# settings as sst2-lora's single process.
NGPU=1
[ $DRY = 1 ] || NGPU=$(nvidia-smi -L 2>/dev/null | grep -c "^GPU" || echo 1)
[ "$NGPU" -ge 1 ] || NGPU=1
launched() { # ROW CONFIG SETS...
    local row=$1 cfg=$2; shift 2
    wanted "$row" || return 0
    late "peftkit $row" && return 0
    stamp "peftkit launch --nproc-per-node $NGPU: $row"
    rm -rf "$RUNS/$row"
    "$PEFTKIT" launch --nproc-per-node "$NGPU" -- train --config "$ROOT/configs/$cfg.toml" \
        --device "$DEVICE" --quiet --output "$RUNS/$row" "${COMMON[@]}" "$@" "${CPU_ONLY[@]}" 2>&1 | tail -5
    [ "${PIPESTATUS[0]}" = 0 ] || { echo "peftkit $row FAILED"; status=1; }
}
launched sst2-lora-ddp-nccl sst2-lora "${SST2[@]}"

if [ $SHAPES = 1 ]; then
stamp "4/5 model shapes"
MEM="$BIN/bin/qlora_memory"
SHAPE_DIR="$ROOT/bench/shapes"
BIG="$SHAPE_DIR/llama-2-7b.json"
FAMILIES="distilbert-base-uncased deberta-v3-base modernbert-base qwen2.5-0.5b llama-3.2-1b"
SHAPE_STEPS=5
SHAPE_SEQ=128
if [ $DRY = 1 ]; then
    # The dry run: the tiny checkpoints' configs stand in for the real shapes.
    BIG="$ROOT/data/fixtures/tiny-llama/config.json"
    SHAPE_DIR="$ROOT/data/fixtures"
    FAMILIES="tiny-distilbert tiny-deberta-v3 tiny-modernbert tiny-qwen2 tiny-llama"
    SHAPE_STEPS=1
    SHAPE_SEQ=32
fi
shape_file() { [ $DRY = 1 ] && echo "$SHAPE_DIR/$1/config.json" || echo "$SHAPE_DIR/$1.json"; }
{
    for mode in qlora lora; do
        late "7B $mode" && break
        echo "## $(basename "$BIG") $mode"
        "$MEM" "$BIG" $mode --gc --batch 1 --seq $SHAPE_SEQ --build bf16 --steps $SHAPE_STEPS --device "$DEVICE" 2>&1 | tail -4
        [ "${PIPESTATUS[0]}" = 0 ] || echo "FAILED: 7B $mode"
    done
    for f in $FAMILIES; do
        late "$f" && break
        echo "## $f lora, batch 8 x $SHAPE_SEQ"
        "$MEM" "$(shape_file "$f")" lora --batch 8 --seq $SHAPE_SEQ --steps $SHAPE_STEPS --device "$DEVICE" 2>&1 | tail -2
        [ "${PIPESTATUS[0]}" = 0 ] || echo "FAILED: $f"
    done
} | tee "$OUT/shapes.txt"
grep -q "^FAILED" "$OUT/shapes.txt" && status=1
fi

stamp "5/5 summary"
python3 "$PACK/summary.py" "$OUT" "$RUNS" | tee "$OUT/results.md"
[ -f "$OUT/shapes.txt" ] && { echo; echo "Model shapes (qlora_memory):"; echo '```'; cat "$OUT/shapes.txt"; echo '```'; } >> "$OUT/results.md"
stamp "done (status $status)"
rm -rf "$BIN" "$RUNS"
exit $status
