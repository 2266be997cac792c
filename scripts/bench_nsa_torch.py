"""PyTorch's dense causal attention (scaled_dot_product_attention: FlashAttention or cuDNN) on the shapes
examples/bench_nsa.cpp measures, printed as 'name value' lines: sdpa_fwd_ms_T, sdpa_fwdbwd_ms_T and the peak memory
above the inputs, sdpa_fwd_gib_T and sdpa_fwdbwd_gib_T.
    python3 scripts/bench_nsa_torch.py T1,T2,... HQ HKV D"""
import sys

import torch
import torch.nn.functional as F

from torch_timing import ms, out

Ts = [int(t) for t in sys.argv[1].split(",")]
HQ, HKV, D = (int(a) for a in sys.argv[2:5])
torch.manual_seed(0)
for T in Ts:
    q = torch.randn(1, HQ, T, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, HKV, T, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(1, HKV, T, D, device="cuda", dtype=torch.bfloat16)
    iters = 5 if T <= 16384 else 3

    def fwd():
        with torch.no_grad():
            F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=HKV != HQ)

    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
    dout = torch.randn_like(q)

    def fb():  # the gradients are freed inside the call, so its peak counts them
        F.scaled_dot_product_attention(qg, kg, vg, is_causal=True, enable_gqa=HKV != HQ).backward(dout)
        qg.grad = kg.grad = vg.grad = None

    for name, fn in (("fwd", fwd), ("fwdbwd", fb)):
        t = ms(fn, iters)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        out(f"sdpa_{name}_ms_{T}", t)
        out(f"sdpa_{name}_gib_{T}", (torch.cuda.max_memory_allocated() - base) / 2**30)
    del q, k, v, qg, kg, vg, dout
    torch.cuda.empty_cache()
