"""Does torch use this CPU's AMX units for bf16 matmuls? (`trainer.precision=bf16-mixed` on a CPU)

    python benchmarks/amx_check.py              # 2 threads, 2048^3
    python benchmarks/amx_check.py --threads 8 --n 4096

Prints the CPU's AMX / AVX512-BF16 flags, the best of 5 matmuls in fp32 and in bf16 (GFLOP/s), and the
oneDNN kernel that a bf16 linear layer runs (`ONEDNN_VERBOSE=1` in a child process): a name with
`amx` means the AMX tiles do the work.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

KERNEL_PROBE = ("import torch; torch.set_num_threads(1); x = torch.randn(64, 256).bfloat16(); "
                "torch.nn.functional.linear(x, torch.randn(256, 256).bfloat16())")


def cpu_flags() -> list[str]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = set(re.findall(r"\b(amx_\w+|avx512_bf16|avx512f)\b", text))
    return sorted(flags)


def best_gflops(dtype, n: int, repeats: int = 5) -> float:
    import torch

    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def onednn_kernels() -> list[str]:
    """The implementations oneDNN reports for a bf16 linear layer (its verbose `exec` lines)."""
    out = subprocess.run([sys.executable, "-c", KERNEL_PROBE], capture_output=True, text=True,
                         env={**os.environ, "ONEDNN_VERBOSE": "1"}, timeout=300)
    kernels = []
    for line in out.stdout.splitlines():
        parts = line.split(",")
        if len(parts) > 6 and parts[2] == "primitive" and parts[3] == "exec":
            kernels.append(f"{parts[5]}:{parts[6]}")
    return sorted(set(kernels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n", type=int, default=2048)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    fp32, bf16 = best_gflops(torch.float32, args.n), best_gflops(torch.bfloat16, args.n)
    kernels = onednn_kernels()
    print(f"CPU flags: {' '.join(cpu_flags()) or 'none of amx_*, avx512_bf16, avx512f'}")
    print(f"matmul {args.n}^3, {args.threads} threads: fp32 {fp32:.0f} GFLOP/s, bf16 {bf16:.0f} GFLOP/s "
          f"({bf16 / fp32:.1f}x)  [load average {os.getloadavg()[0]:.1f}]")
    print(f"oneDNN kernel of a bf16 linear layer: {', '.join(kernels) or 'none reported (not oneDNN)'}")
    uses_amx = any("amx" in k for k in kernels)
    print("AMX: used" if uses_amx else "AMX: not used (bf16-mixed on this CPU may not be faster than fp32)")


if __name__ == "__main__":
    main()
