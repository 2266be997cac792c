"""PyTorch timings for examples/bench_moe.cpp, printed as 'name value' lines (ms unless the name says otherwise).

  python3 scripts/bench_moe_torch.py tokens dim experts top_k hidden shared

- moe_loop_ms: a DeepSeekMoE layer written as PyTorch MoE code usually is (the Hugging Face DeepSeek/Mixtral
  pattern): router, top-k, then a Python loop over experts that gathers each expert's tokens, runs its SwiGLU and
  index_add_s the gated result back; shared experts as one SwiGLU MLP. Forward + backward, bf16.
- dense_ms: the dense SwiGLU MLP with the same active FLOPs (hidden (top_k + shared) * expert hidden).
- grouped_mm_ms / grouped_mm_tflops: torch._grouped_mm (CUTLASS grouped GEMM, Hopper) for x @ w1 over uniformly
  routed rows, when this PyTorch has it.
"""
import sys

import torch
import torch.nn.functional as F

from torch_timing import ms, out

T, D, E, K, H, S = (int(a) for a in sys.argv[1:7])
dev = "cuda"
dt = torch.bfloat16
torch.manual_seed(0)


def param(*shape, fan_in):
    return (torch.randn(*shape, device=dev) / fan_in**0.5).to(dt).requires_grad_()


router = param(E, D, fan_in=D)
w1, w3, w2 = param(E, D, H, fan_in=D), param(E, D, H, fan_in=D), param(E, H, D, fan_in=H)
s1, s3, s2 = param(D, S * H, fan_in=D), param(D, S * H, fan_in=D), param(S * H, D, fan_in=S * H)
x = (torch.randn(T, D, device=dev) * 0.02).to(dt).requires_grad_()
up = (torch.randn(T, D, device=dev) * 0.02).to(dt)


def moe_loop():
    scores = torch.softmax(x.float() @ router.float().t(), dim=-1)
    gates, idx = scores.topk(K, dim=-1)
    y = torch.zeros_like(x)
    for e in range(E):
        tok, slot = torch.where(idx == e)
        if tok.numel() == 0:
            continue
        xe = x[tok]
        he = F.silu(xe @ w1[e]) * (xe @ w3[e])
        y = y.index_add(0, tok, (he @ w2[e]) * gates[tok, slot, None].to(dt))
    y = y + (F.silu(x @ s1) * (x @ s3)) @ s2
    load = torch.bincount(idx.flatten(), minlength=E).float()
    aux = 0.001 * (load * E / (K * T) * scores.mean(0)).sum()
    ((y.float() * up.float()).sum() + aux).backward()
    for p in (x, router, w1, w2, w3, s1, s2, s3):
        p.grad = None


d1, d3, d2 = param(D, (K + S) * H, fan_in=D), param(D, (K + S) * H, fan_in=D), param((K + S) * H, D, fan_in=H)


def dense():
    y = (F.silu(x @ d1) * (x @ d3)) @ d2
    (y.float() * up.float()).sum().backward()
    for p in (x, d1, d2, d3):
        p.grad = None


out("moe_loop_ms", ms(moe_loop, 10))
out("dense_ms", ms(dense, 10))

if hasattr(torch, "_grouped_mm"):
    with torch.no_grad():
        idx = torch.rand(T, E, device=dev).topk(K, dim=-1).indices
        counts = torch.bincount(idx.flatten(), minlength=E)
        offs = counts.cumsum(0).to(torch.int32)
        xs = (torch.randn(T * K, D, device=dev) * 0.02).to(dt)
        w = w1.detach()
        try:
            torch._grouped_mm(xs, w, offs=offs)
        except RuntimeError:  # older builds want the weights column-major
            w = w.transpose(-2, -1).contiguous().transpose(-2, -1)
        t = ms(lambda: torch._grouped_mm(xs, w, offs=offs), 20)
        out("grouped_mm_ms", t)
        out("grouped_mm_tflops", 2.0 * T * K * D * H / t / 1e9)
        out("grouped_mm_max_over_mean", counts.max().item() / (T * K / E))
