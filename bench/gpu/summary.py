#!/usr/bin/env python3
"""Summarises one `run.sh` run: peftkit's run reports beside HF's rows (standard library only).

Usage: summary.py OUT RUNS   (RUNS holds <row>/report.json; OUT hf.jsonl, tests.txt)
Prints a markdown table and writes OUT/results.jsonl (one object a row, both sides' raw figures).

Both sides' train samples/s are whole-run figures (warm-up steps included), as each Trainer
reports them; HF's steady state (its steps after the first eighth) is shown beside them.
"""
import json
import os
import sys


def gib(b):
    return None if b is None else round(b / 2**30, 2)


def fmt(x, nd=1):
    return "–" if x is None else f"{x:,.{nd}f}"


def main(out, runs):
    hf = {}
    env = {}
    path = os.path.join(out, "hf.jsonl")
    if os.path.exists(path):
        for line in open(path):
            d = json.loads(line)
            if d.get("row") == "_env":
                env = d
            else:
                hf[d["row"]] = d
    rows = []
    for row in sorted(os.listdir(runs)) if os.path.isdir(runs) else []:
        rp = os.path.join(runs, row, "report.json")
        ours = None
        if os.path.exists(rp):
            r = json.load(open(rp))
            t = r.get("train") or {}
            mem = t.get("memory") or {}
            fin = (r.get("final_results") or [{}])[0]
            ours = {
                "train_samples_per_s": t.get("train_samples_per_second"),
                "train_loss": t.get("train_loss"),
                "steps": t.get("global_step"),
                "eval_samples_per_s": fin.get("samples_per_second"),
                "eval_accuracy": (fin.get("metrics") or {}).get("accuracy"),
                "peak_train_gib": gib(mem.get("peak_bytes")) if mem.get("source") == "cuda_allocated" else None,
                "memory_source": mem.get("source"),
                "trainable": r.get("trainable_params"),
                "device": r.get("device"),
                "distributed": t.get("distributed"),
            }
        theirs = hf.get(row)
        rows.append({"row": row, "peftkit": ours, "hf": theirs})
    with open(os.path.join(out, "results.jsonl"), "w") as f:
        if env:
            f.write(json.dumps({"row": "_env", **env}) + "\n")
        for r in rows:
            f.write(json.dumps(r, default=str) + "\n")

    print("| row | peftkit train samples/s | HF Trainer train samples/s (steady) | peftkit / HF | "
          "eval samples/s peftkit / HF | peak train GiB peftkit / HF | trainable |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        o, h = r["peftkit"] or {}, r["hf"] or {}
        if r["hf"] and "error" in h:
            h = {"trainer_train_samples_per_second": None, "error": h["error"]}
        ratio = None
        if o.get("train_samples_per_s") and h.get("trainer_train_samples_per_second"):
            ratio = o["train_samples_per_s"] / h["trainer_train_samples_per_second"]
        hf_train = "–" if not r["hf"] else (
            f"{fmt(h.get('trainer_train_samples_per_second'))} ({fmt(h.get('steady_train_samples_per_s'))})")
        if "error" in h:
            hf_train = "error: " + h["error"][:60].replace("|", "/")
        print(f"| {r['row']} | {fmt(o.get('train_samples_per_s'))} | {hf_train} | "
              f"{'–' if ratio is None else f'**{ratio:.2f}×**'} | "
              f"{fmt(o.get('eval_samples_per_s'))} / {fmt(h.get('trainer_eval_samples_per_second'))} | "
              f"{fmt(o.get('peak_train_gib'), 2)} / {fmt(h.get('peak_train_mem_gib'), 2)} | "
              f"{fmt(o.get('trainable'), 0)} |")
    for r in rows:
        d = (r["peftkit"] or {}).get("distributed")
        if d:
            print(f"\n{r['row']}: {d.get('world_size')} rank(s); "
                  f"{d.get('allreduce_bytes_per_step', 0) / 2**20:.2f} MiB all-reduced a step, "
                  f"{d.get('allreduce_seconds', 0):.2f} s in all-reduce over the run.")
    if env:
        print(f"\nHF side: torch {env.get('torch')}, transformers {env.get('transformers')}, "
              f"peft {env.get('peft')}, GPU {env.get('gpu', 'none')}.")
    tests = os.path.join(out, "tests.txt")
    if os.path.exists(tests):
        results = [l.strip() for l in open(tests) if l.startswith("test result")]
        print("\nCUDA-path tests: " + "; ".join(results))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
