#!/usr/bin/env python3
"""HF transformers Trainer on the same workload as peftkit's `minilm-sst2-full` / `minilm-sst2-lora`
benchmark runs (`--lora`: peft's LoRA r 8, alpha 16, dropout 0.1 on query/key/value/dense, the
classifier trained as `modules_to_save`, as peftkit's config).

`cargo xtask bench` runs this right after peftkit's own run, on the same machine, with the same
arguments: all-MiniLM-L6-v2, the first N rows of SST-2 train, batch 32, dynamic padding with
length grouping, max_length 128, AdamW (`--lr`, 5e-5) with weight decay 0.01 and 6 % warmup, fp32, the same
number of optimizer steps, no evaluation or saving during training; then one evaluation of the full
validation split at batch 64. Prints one JSON object.

Needs torch 2.11.0, transformers and pyarrow (`cargo xtask fixtures` installs them); CI never runs it.
"""
import argparse
import json
import os
import time
from pathlib import Path

import torch


def snapshot(hf_home, kind, repo):
    base = Path(hf_home) / "hub" / f"{kind}--{repo.replace('/', '--')}"
    return base / "snapshots" / (base / "refs" / "main").read_text().strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--train-rows", type=int, default=1024)
    ap.add_argument("--max-steps", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--eval-batch-size", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--lora", action="store_true")
    ap.add_argument("--no-group", action="store_true", help="train in random order (no length grouping)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import pyarrow.parquet as pq
    from torch.utils.data import Dataset
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    hf_home = os.environ.get("HF_HOME", str(Path(__file__).resolve().parents[2] / "shared" / "hf-home"))
    data = snapshot(hf_home, "datasets", "nyu-mll/glue") / "sst2"
    tok = AutoTokenizer.from_pretrained(args.model_dir)

    class Rows(Dataset):
        def __init__(self, path, n=None):
            t = pq.read_table(path, columns=["sentence", "label"])
            texts = t.column("sentence").to_pylist()[:n]
            self.labels = t.column("label").to_pylist()[:n]
            self.enc = tok(texts, truncation=True, max_length=args.max_length)

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, i):
            return {"input_ids": self.enc["input_ids"][i], "attention_mask": self.enc["attention_mask"][i],
                    "labels": self.labels[i]}

    train = Rows(data / "train-00000-of-00001.parquet", args.train_rows)
    val = Rows(data / "validation-00000-of-00001.parquet")
    model = AutoModelForSequenceClassification.from_pretrained(args.model_dir, num_labels=2)
    if args.lora:
        from peft import LoraConfig, TaskType, get_peft_model
        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.1,
                                                 target_modules=["query", "key", "value", "dense"]))
    targs = TrainingArguments(
        output_dir="/tmp/peftkit-hf-bench", learning_rate=args.lr, weight_decay=0.01, warmup_steps=0.06,  # v5: a float < 1 is the warmup ratio
        max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.eval_batch_size, train_sampling_strategy="random" if args.no_group else "group_by_length", eval_strategy="no",
        save_strategy="no", logging_steps=10, report_to=[], use_cpu=True, seed=42, disable_tqdm=True,
        dataloader_num_workers=0)
    trainer = Trainer(model=model, args=targs, train_dataset=train, data_collator=DataCollatorWithPadding(tok),
                      compute_metrics=lambda p: {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())})
    t0 = time.perf_counter()
    out = trainer.train()
    train_wall = time.perf_counter() - t0
    ev = trainer.evaluate(val)
    import resource
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({
        "peak_rss_mib": peak_rss_mib, "group_by_length": not args.no_group,
        "framework": "transformers Trainer" + (" + peft LoRA" if args.lora else ""), "transformers": __import__("transformers").__version__,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "steps": out.global_step,
        "train_samples_per_second": out.metrics["train_samples_per_second"], "train_runtime": out.metrics["train_runtime"],
        "train_wall": train_wall, "eval_samples_per_second": ev["eval_samples_per_second"],
        "eval_accuracy": ev["eval_accuracy"], "eval_loss": ev["eval_loss"],
    }))


if __name__ == "__main__":
    main()
