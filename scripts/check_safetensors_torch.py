"""Checks safetensors interoperability with PyTorch's reader/writer (run where torch and safetensors exist):
reads the sample our st_tool wrote, and writes one for st_tool to dump."""
import sys

import torch
from safetensors.torch import load_file, save_file

ours, theirs = sys.argv[1], sys.argv[2]
d = load_file(ours)
for k in sorted(d):
    print(f"torch read {k} {d[k].dtype} {tuple(d[k].shape)} sum={d[k].to(torch.float64).sum().item()}")
save_file({"w_bf16": torch.arange(6, dtype=torch.bfloat16).reshape(2, 3) * 0.5,
           "w_f32": torch.full((4,), 1.25), "idx": torch.tensor([3, -1, 7], dtype=torch.int64),
           "e4m3": torch.tensor([1.0, 448.0, -2.0]).to(torch.float8_e4m3fn)}, theirs, metadata={"by": "torch"})
print("torch wrote", theirs)
