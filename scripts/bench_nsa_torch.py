"""PyTorch's dense causal attention (scaled_dot_product_attention) on the shapes examples/bench_nsa.cpp measures,
printed as 'name value' lines: sdpa_fwd_ms_T, sdpa_fwdbwd_ms_T and the peak memory above the inputs, sdpa_fwd_gib_T
and sdpa_fwdbwd_gib_T, for the backend PyTorch picks (cuDNN on the H100); then the same as fa2_* with the flash
backend forced (FlashAttention-2, the issue's reference for NSA's speedup), where it runs. Nothing else goes to
stdout: the C++ side stops reading at the first other line.
    python3 scripts/bench_nsa_torch.py T1,T2,... HQ HKV D"""
import contextlib
import sys

import torch
import torch.nn.functional as F

from torch_timing import ms, out

try:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    BACKENDS = [("sdpa", None), ("fa2", SDPBackend.FLASH_ATTENTION)]
except ImportError:  # older PyTorch: the default backend only
    BACKENDS = [("sdpa", None)]

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

    for prefix, backend in BACKENDS:
        try:
            with sdpa_kernel(backend) if backend is not None else contextlib.nullcontext():
                for name, fn in (("fwd", fwd), ("fwdbwd", fb)):
                    t = ms(fn, iters)
                    torch.cuda.synchronize()
                    base = torch.cuda.memory_allocated()
                    torch.cuda.reset_peak_memory_stats()
                    fn()
                    torch.cuda.synchronize()
                    out(f"{prefix}_{name}_ms_{T}", t)
                    out(f"{prefix}_{name}_gib_{T}", (torch.cuda.max_memory_allocated() - base) / 2**30)
        except RuntimeError as e:  # the backend does not take this shape: its rows are left out
            print(f"bench_nsa_torch: {prefix} at T={T}: {e}", file=sys.stderr)
            qg.grad = kg.grad = vg.grad = None
    del q, k, v, qg, kg, vg, dout
    torch.cuda.empty_cache()
