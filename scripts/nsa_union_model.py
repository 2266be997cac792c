#!/usr/bin/env python3
"""How many selection blocks a group of P consecutive positions loads, per position, when each position chooses
its n blocks as bench_nsa's random queries make it do: block 0 and the two local blocks t / l' and t / l' - 1
(NSA-CONVENTIONS.md), the rest uniformly at random among the blocks it may see. P = 4 is nsa_slc_fwd_ws's tile at
G = 16 (64 rows): it loads the union of its positions' blocks, and each row computes on all of them, so the union
per position is the L2 traffic per position (x 32 KB of keys and values) and union / n per row the product waste.
Larger P is what sharing the loads over more positions (more consumers per block, a cluster) would give.
    python3 scripts/nsa_union_model.py [T ...]      (default 8192 65536; no GPU, no dependencies)
"""
import random
import sys


def blocks_per_position(T, P, n=16, lp=64, samples=3000, seed=1):
    rnd = random.Random(seed)
    total = 0
    for _ in range(samples):
        t0 = rnd.randrange(0, T // P) * P  # a tile, uniformly
        union = set()
        for t in range(t0, t0 + P):
            cur = t // lp
            chosen = {0, cur, max(cur - 1, 0)}
            free = [b for b in range(cur + 1) if b not in chosen]
            chosen.update(rnd.sample(free, min(n - len(chosen), len(free))))
            union |= chosen
        total += len(union)
    return total / (samples * P)


if __name__ == "__main__":
    Ts = [int(x) for x in sys.argv[1:]] or [8192, 65536]
    Ps = (1, 4, 8, 16, 32, 64, 256)
    print("| T | " + " | ".join(f"P = {p}" for p in Ps) + " |")
    print("|---|" + "---|" * len(Ps))
    for T in Ts:
        print(f"| {T} | " + " | ".join(f"{blocks_per_position(T, p):.2f}" for p in Ps) + " |")
