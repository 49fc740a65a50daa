"""The Python side of `cargo xtask bench serve` (development tool; needs torch, transformers,
peft from the pinned venv).

  prepare --minilm DIR --out DIR --adapters N --texts FILE.parquet
      N LoRA adapters (r 8 on query/value, random A and B, the head in modules_to_save) saved
      by peft on MiniLM, the same files both servers load; texts.json: the SST-2 validation
      sentences.
  serve --minilm DIR --adapter NAME=DIR ... --port P
      The server a transformers + peft user would write: the standard library's threading HTTP
      server in front of one `PeftModel` holding every adapter; each request switches to its
      adapter (`set_adapter`) under a lock, tokenizes its inputs, and runs one forward pass
      (requests are not batched together). Same request and answer shapes as
      `peftkit serve` (TEI's `/predict`).
"""

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch


def prepare(args):
    import pyarrow.parquet as pq
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    for i in range(args.adapters):
        torch.manual_seed(100 + i)
        base = AutoModelForSequenceClassification.from_pretrained(args.minilm, num_labels=2)
        cfg = LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=8,
            lora_alpha=16,
            target_modules=["query", "value"],
            init_lora_weights=False,
        )
        model = get_peft_model(base, cfg)
        out = f"{args.out}/a{i}"
        model.save_pretrained(out)
        with open(f"{out}/id2label.json", "w") as f:
            json.dump({"0": "negative", "1": "positive"}, f)
    texts = pq.read_table(args.texts, columns=["sentence"]).column("sentence").to_pylist()
    with open(f"{args.out}/texts.json", "w") as f:
        json.dump(texts, f)
    print(json.dumps({"adapters": args.adapters, "texts": len(texts)}))


def serve(args):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_grad_enabled(False)
    named = [a.split("=", 1) for a in args.adapter]
    tokenizer = AutoTokenizer.from_pretrained(args.minilm)
    base = AutoModelForSequenceClassification.from_pretrained(args.minilm, num_labels=2)
    model = PeftModel.from_pretrained(base, named[0][1], adapter_name=named[0][0])
    for name, path in named[1:]:
        model.load_adapter(path, adapter_name=name)
    model.eval()
    labels = ["negative", "positive"]
    lock = threading.Lock()
    default = named[0][0]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            inputs = body["inputs"]
            single = isinstance(inputs, str)
            texts = [inputs] if single else [t[0] if isinstance(t, list) else t for t in inputs]
            with lock:
                model.set_adapter(body.get("adapter", default))
                enc = tokenizer(texts, truncation=True, max_length=512, padding=True, return_tensors="pt")
                with torch.inference_mode():
                    probs = model(**enc).logits.softmax(-1).tolist()
            out = [
                sorted(({"label": labels[i], "score": s} for i, s in enumerate(p)), key=lambda x: -x["score"])
                for p in probs
            ]
            data = json.dumps(out[0] if single else out).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    # A listen backlog for 32 concurrent clients (the standard library's default is 5).
    ThreadingHTTPServer.request_queue_size = 128
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare")
    a.add_argument("--minilm", required=True)
    a.add_argument("--out", required=True)
    a.add_argument("--adapters", type=int, default=8)
    a.add_argument("--texts", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--minilm", required=True)
    s.add_argument("--adapter", action="append", required=True)
    s.add_argument("--port", type=int, default=0)
    args = p.parse_args()
    {"prepare": prepare, "serve": serve}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
