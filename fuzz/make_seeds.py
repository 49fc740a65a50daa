"""Writes the seed corpus of each fuzz target (fuzz/corpus/TARGET/) from the repository's fixtures
and configs plus a few tiny files made here. Run from the repository root with the torch venv's
python (pyarrow, safetensors, tokenizers come with transformers==5.23.0):

    ~/.cache/peftkit/torch-2.11.0/bin/python fuzz/make_seeds.py
"""
import json, os, shutil, struct
from pathlib import Path

import pyarrow as pa, pyarrow.parquet as pq
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

root = Path(__file__).resolve().parent.parent
corpus = root / "fuzz" / "corpus"
fx = root / "data" / "fixtures"


def put(target, name, data):
    d = corpus / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


for m in ["tiny-bert", "tiny-gpt2", "tiny-roberta", "tiny-distilbert"]:
    put("config_json", m, (fx / m / "config.json").read_bytes())
for a in ["lora-bert", "prefix-gpt2", "ia3-roberta", "prompt-bert", "ptuning-gpt2", "adalora-bert", "dora-bert"]:
    p = fx / a / "adapter" / "adapter_config.json"
    if p.is_file():
        put("adapter_config_json", a, p.read_bytes())


def safetensors(tensors):
    header, off, data = {}, 0, b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw)
        data += raw
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


put("safetensors", "two", safetensors({
    "a.weight": ("F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4)),
    "b.bias": ("F16", [3], b"\x00<\x00<\x00<"),
}))
put("safetensors", "ints", safetensors({"ids": ("I64", [2], struct.pack("<2q", 7, -1)), "m": ("U8", [4], b"\x01\x00\x01\x01")}))

meta = {b"huggingface": json.dumps({"info": {"features": {"label": {"names": ["neg", "pos"], "_type": "ClassLabel"}}}}).encode()}
t = pa.table({"text": ["good film", "bad", "fine"], "label": pa.array([1, 0, 1], pa.int64())}).replace_schema_metadata(meta)
for name, kw in [("plain", {}), ("snappy", {"compression": "snappy"})]:
    path = corpus / "parquet" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(t, path, **kw)
pq.write_table(pa.table({"sentence": ["x"], "label": pa.array([0], pa.int32())}), corpus / "parquet" / "sentence")

vocab = {w: i for i, w in enumerate("[PAD] [UNK] [CLS] [SEP] [MASK] a good film , not bad one ##s".split())}
tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
tok.normalizer = normalizers.BertNormalizer(lowercase=True)
tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
put("tokenizer_json", "wordpiece", tok.to_str())

state = {"global_step": 8, "epoch": 1, "batches_done_in_epoch": 2, "total_steps": 32, "best_metric": 0.5,
         "best_checkpoint": "checkpoint-8", "patience": 0, "train_loss_total": 8.4, "stopped_early": False,
         "log_history": [{"step": 4, "loss": 1.1, "learning_rate": 0.001}], "world_size": 1}
put("trainer_state_json", "mid", json.dumps(state))

for c in ["minilm-sst2-lora", "sst2-lora", "emotion-prefix", "minilm-sst2-qlora"]:
    put("experiment_toml", c, (root / "configs" / f"{c}.toml").read_bytes())
print("seeds:", {d.name: len(list(d.iterdir())) for d in sorted(corpus.iterdir())})
