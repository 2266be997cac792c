"""What the PyTorch reference scripts (bench_torch.py, bench_moe_torch.py) share: the median CUDA-event time of a
call after 3 warm-up calls, as the C++ benchmarks take it (examples/bench_timing.h), and the 'name value' lines
they print for the C++ side to read."""
import torch


def ms(fn, iters=20):
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def out(name, v):
    print(f"{name} {v:.4f}", flush=True)
