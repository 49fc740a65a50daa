#!/usr/bin/env python3
"""peft LoRA vs peft QLoRA (bitsandbytes 4-bit) on CPU: one training micro-batch.

The same workload as the `minilm_train_microbatch_16x128_cpu` group of peftkit's `qlora`
criterion bench: all-MiniLM-L6-v2 for sequence classification, LoRA r 8 / alpha 16 on
query/key/value/dense, a batch of 16 random sequences of 128 tokens, forward + backward of the
cross-entropy loss, train mode. QLoRA: NF4 + double quantization, fp32 compute, classifier not
quantized. Prints the median time of each and their ratio as JSON.

Run it right after `cargo bench -p peftkit-adapters --bench qlora -- minilm` on the same machine
(`cargo xtask bench --qlora` does both). Needs torch 2.11.0, transformers, peft and bitsandbytes
(`cargo xtask fixtures` installs them); CI never runs it.
"""
import argparse
import json
import statistics
import time

import torch


def build(model_dir, quantized):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, BitsAndBytesConfig

    kwargs = {"num_labels": 2}
    if quantized:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32, llm_int8_skip_modules=["classifier"])
        kwargs["device_map"] = "cpu"
    base = AutoModelForSequenceClassification.from_pretrained(model_dir, **kwargs)
    cfg = LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, lora_dropout=0.1,
                     target_modules=["query", "key", "value", "dense"])
    return get_peft_model(base, cfg).train()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ids = torch.randint(1000, 30000, (16, 128))
    mask = torch.ones_like(ids)
    labels = torch.randint(0, 2, (16,))
    out = {"threads": args.threads, "torch": torch.__version__}
    for name, quantized in (("lora", False), ("qlora_nf4_dq", True)):
        model = build(args.model_dir, quantized)
        times = []
        for i in range(args.repeats + 2):
            t = time.perf_counter()
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            if i >= 2:
                times.append(time.perf_counter() - t)
        out[f"{name}_ms"] = 1000 * statistics.median(times)
    out["qlora_over_lora"] = out["qlora_nf4_dq_ms"] / out["lora_ms"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
