#!/usr/bin/env python3
"""The Python equivalent of `peftkit predict --model BASE --adapter ADAPTER --text TEXT` from a
cold process: import torch, transformers and peft, load the base classifier and the tokenizer,
load the peft adapter on it, classify one text, print the label.

`cargo xtask bench --side-by-side-only` times this process from start to exit beside peftkit's
(issue 15: peftkit's cold start ≤ 1/5 of this). Needs torch, transformers, peft; CI never runs it.
"""
import argparse
import json
import os

import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--text", required=True)
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    with open(os.path.join(a.adapter, "adapter_config.json")) as f:
        json.load(f)
    tok = AutoTokenizer.from_pretrained(a.model)
    base = AutoModelForSequenceClassification.from_pretrained(a.model, num_labels=2)
    model = PeftModel.from_pretrained(base, a.adapter).eval()
    with torch.inference_mode():
        enc = tok([a.text], return_tensors="pt", truncation=True)
        label = int(model(**enc).logits.argmax(-1)[0])
    print(model.config.id2label.get(label, label))


if __name__ == "__main__":
    main()
