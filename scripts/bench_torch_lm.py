"""PyTorch eager reference for examples/train_lm: the same model (pre-norm blocks, RMSNorm, rotary positions,
grouped-query causal attention through scaled_dot_product_attention, SwiGLU MLP, tied embeddings) trained with the
same step (bf16 compute with f32 master weights via autocast, AdamW fused, clipping at 1.0) on random tokens, timed
after warm-up. Prints one line: tokens/s and MFU, to put next to train_lm's progress line in the same run.

  python3 scripts/bench_torch_lm.py --dim 768 --layers 12 --heads 12 --kv-heads 12 --seq 2048 --batch 8 --vocab 256
  (add --compile for torch.compile's number too)
"""
import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Rotary:
    def __init__(self, head_dim, seq, theta, device):
        inv = theta ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float64) / head_dim)
        ang = torch.outer(torch.arange(seq, device=device, dtype=torch.float64), inv)
        self.cos, self.sin = ang.cos().float(), ang.sin().float()

    def __call__(self, x):  # x [B, T, H, D], halves layout (as ops/rope.h's default)
        T, half = x.shape[1], x.shape[-1] // 2
        c, s = self.cos[:T, None, :].to(x.dtype), self.sin[:T, None, :].to(x.dtype)
        a, b = x[..., :half], x[..., half:]
        return torch.cat([a * c - b * s, a * s + b * c], dim=-1)


class Block(nn.Module):
    def __init__(self, dim, heads, kv_heads, hidden):
        super().__init__()
        self.h, self.kv, self.hd = heads, kv_heads, dim // heads
        self.attn_norm, self.mlp_norm = nn.RMSNorm(dim, eps=1e-6), nn.RMSNorm(dim, eps=1e-6)
        self.wq = nn.Linear(dim, heads * self.hd, bias=False)
        self.wk = nn.Linear(dim, kv_heads * self.hd, bias=False)
        self.wv = nn.Linear(dim, kv_heads * self.hd, bias=False)
        self.wo = nn.Linear(heads * self.hd, dim, bias=False)
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x, rope):
        B, T, _ = x.shape
        h = self.attn_norm(x)
        q = rope(self.wq(h).view(B, T, self.h, self.hd)).transpose(1, 2)
        k = rope(self.wk(h).view(B, T, self.kv, self.hd)).transpose(1, 2)
        v = self.wv(h).view(B, T, self.kv, self.hd).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.kv != self.h)
        x = x + self.wo(o.transpose(1, 2).reshape(B, T, -1))
        h = self.mlp_norm(x)
        return x + self.w2(F.silu(self.w1(h)) * self.w3(h))


class LM(nn.Module):
    def __init__(self, a):
        super().__init__()
        hidden = a.hidden or (a.dim * 8 // 3 + 63) // 64 * 64  # as nn::LMConfig::hidden()
        self.emb = nn.Embedding(a.vocab, a.dim)
        self.blocks = nn.ModuleList(Block(a.dim, a.heads, a.kv_heads, hidden) for _ in range(a.layers))
        self.norm = nn.RMSNorm(a.dim, eps=1e-6)
        self.rope = Rotary(a.dim // a.heads, a.seq, 10000.0, "cuda")

    def forward(self, idx, targets):
        x = self.emb(idx)
        for b in self.blocks:
            x = b(x, self.rope)
        logits = self.norm(x) @ self.emb.weight.t()
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.view(-1))


def main():
    p = argparse.ArgumentParser()
    for k, v in dict(dim=768, layers=12, heads=12, kv_heads=12, seq=2048, batch=8, vocab=256, hidden=0, steps=20,
                     warmup=5).items():
        p.add_argument("--" + k.replace("_", "-"), type=int, default=v)
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--profile", type=int, default=0, help="print a kernel table of N more steps (torch.profiler)")
    a = p.parse_args()
    torch.manual_seed(0)
    model = LM(a).cuda()
    n_params = sum(t.numel() for t in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    step_fn = model
    if a.compile:
        step_fn = torch.compile(model)
    x = torch.randint(0, a.vocab, (a.batch, a.seq), device="cuda")
    y = torch.randint(0, a.vocab, (a.batch, a.seq), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = step_fn(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(a.warmup):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / a.steps
    tps = a.batch * a.seq / dt
    flops_per_token = 6 * n_params + 6 * a.layers * a.seq * a.dim  # as examples/train_lm.cpp counts
    print(f"torch {'compile' if a.compile else 'eager'}: {n_params} params | {tps:.0f} tok/s | "
          f"MFU {100 * tps * flops_per_token / (a.peak_tflops * 1e12):.1f}% | {1e3 * dt:.1f} ms/step | "
          f"peak mem {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    if a.profile:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(a.profile):
                step()
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="device_time_total", row_limit=30, max_name_column_width=70))


if __name__ == "__main__":
    main()
