"""PyTorch timings of the shapes examples/bench_kernels.cpp measures, printed as 'name value' lines.

Bytes are counted as in the C++ benchmark (each input read once, each output written once)."""
import torch
import torch.nn.functional as F

from torch_timing import ms, out

import sys

dev = "cuda"
torch.manual_seed(0)
only = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--only=")), "")


def want(part):
    return only in ("", part)


if want("memory"):
    with torch.no_grad():
        a = torch.rand(1 << 28, device=dev)
        b = torch.empty_like(a)
        t = ms(lambda: b.copy_(a))
        out("copy_gbps", 2 * a.numel() * 4 / t / 1e6)
        del a, b
        R, C = 16384, 4096
        x = torch.randn(R, C, device=dev, dtype=torch.bfloat16)
        y = torch.randn_like(x)
        w = torch.randn(C, device=dev, dtype=torch.bfloat16)
        n = R * C
        out("add_gbps", 3 * n * 2 / ms(lambda: x + y) / 1e6)
        out("gelu_tanh_gbps", 2 * n * 2 / ms(lambda: F.gelu(x, approximate="tanh")) / 1e6)
        out("swiglu_gbps", 3 * n * 2 / ms(lambda: F.silu(x) * y) / 1e6)
        out("rms_norm_gbps", 2 * n * 2 / ms(lambda: F.rms_norm(x, (C,), w, 1e-6)) / 1e6)
        f = torch.empty(1 << 26, device=dev)
        out("fill_f32_gbps", f.numel() * 4 / ms(lambda: f.zero_()) / 1e6)
        del f
        xf = x.float()
        out("cast_f32_bf16_gbps", n * 6 / ms(lambda: xf.to(torch.bfloat16)) / 1e6)
        out("cast_bf16_f32_gbps", n * 6 / ms(lambda: x.float()) / 1e6)
        del xf
        x3 = x.view(4096, 128, 128)  # [T, H, D] -> [H, T, D]
        out("permute_bf16_gbps", n * 4 / ms(lambda: x3.permute(1, 0, 2).contiguous()) / 1e6)
        out("add_bcast_bf16_gbps", n * 4 / ms(lambda: x3.permute(1, 0, 2) + w[:128]) / 1e6)
    xg = x.detach().requires_grad_()
    wg = w.detach().requires_grad_()
    o = F.rms_norm(xg, (C,), wg, 1e-6)
    def rms_bwd():
        xg.grad = None
        wg.grad = None
        o.backward(y, retain_graph=True)


    out("rms_norm_bwd_gbps", 3 * n * 2 / ms(rms_bwd) / 1e6)
    del x, y, xg, o
    R, V = 16384, 50304
    logits = torch.randn(R, V, device=dev, dtype=torch.bfloat16)
    target = torch.randint(0, V, (R,), device=dev)
    n = R * V
    with torch.no_grad():
        out("softmax_gbps", 2 * n * 2 / ms(lambda: torch.softmax(logits, -1), 10) / 1e6)
    lg = logits.detach().requires_grad_()


    def ce():
        lg.grad = None
        F.cross_entropy(lg, target).backward()


    out("cross_entropy_gbps", 2 * n * 2 / ms(ce, 10) / 1e6)
    del logits, lg
if want("matmul"):
    with torch.no_grad():
        for M, N, K in [(8192, 8192, 8192), (16384, 2304, 768), (16384, 768, 2048), (16384, 50304, 768)]:
            a = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
            b = torch.randn(K, N, device=dev, dtype=torch.bfloat16)
            out(f"matmul_{M}x{N}x{K}_tflops", 2 * M * N * K / ms(lambda: a @ b) / 1e9)

if want("attention"):
    # Fused causal attention (SDPA picks FlashAttention/cuDNN); same FLOP count as the C++ benchmark. Sliding
    # windows have no fused SDPA path, so those shapes are not timed here.
    for B, T, H, Hkv, D, W in [(4, 2048, 12, 12, 64, 0), (2, 4096, 16, 16, 128, 0), (1, 8192, 32, 8, 128, 0)]:
        q = torch.randn(B, T, H, D, device=dev, dtype=torch.bfloat16).transpose(1, 2)
        k = torch.randn(B, T, Hkv, D, device=dev, dtype=torch.bfloat16).transpose(1, 2)
        v = torch.randn(B, T, Hkv, D, device=dev, dtype=torch.bfloat16).transpose(1, 2)
        flop = 4.0 * B * H * D * T * (T + 1) / 2
        key = f"attn_{B}x{T}x{H}x{Hkv}x{D}x{W}"
        with torch.no_grad():
            out(key + "_fwd_tflops", flop / ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=Hkv != H)) / 1e9)
        qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
        dout = torch.randn_like(q)

        def fb():
            qg.grad = kg.grad = vg.grad = None
            F.scaled_dot_product_attention(qg, kg, vg, is_causal=True, enable_gqa=Hkv != H).backward(dout)

        out(key + "_fwdbwd_tflops", 3.5 * flop / ms(fb) / 1e9)
