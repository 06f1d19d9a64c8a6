"""One linear layer at SmolLM2-135M's shapes: `F.linear` (fp32: torch's BLAS call on the weight as
stored; `--dtype bf16`: under a CPU's bf16 autocast on the stage's bf16 copy of the weight, which
oneDNN reorders at every call) against oneDNN on the weight packed once (`cpu_prepack`,
rto/models/prepacked.py), forward and the input's gradient (`grad @ W`, which stays the plain matmul).

    python benchmarks/prepack_check.py                 # fp32, 2 threads, 16 / 512 / 960 rows
    python benchmarks/prepack_check.py --dtype bf16    # bf16-mixed's path; also: are the outputs identical?
    python benchmarks/prepack_check.py --threads 1 --rows 16

Rows: 16 is a decoding step of the issue's 16 prompts; 512 and 960 the 8-row minibatches and the
16-row frozen forwards of its 84-column sequences (less the shared prefix). Milliseconds per call,
best of `--repeats` timed loops.
"""

from __future__ import annotations

import argparse
import time

import torch

from rto.models.prepacked import available

SHAPES = {  # SmolLM2-135M: name -> (out, in) of the weight
    "q_proj / o_proj": (576, 576),
    "k_proj / v_proj": (192, 576),
    "gate_proj / up_proj": (1536, 576),
    "down_proj": (576, 1536),
    "lm_head (tied)": (49152, 576),
}
PER_LAYER = {"q_proj / o_proj": 2, "k_proj / v_proj": 2, "gate_proj / up_proj": 2, "down_proj": 1}


def best_ms(fn, calls: int, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls)
    return min(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, nargs="+", default=[16, 512, 960])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    args = parser.parse_args()
    if not available(torch.bfloat16 if args.dtype == "bf16" else torch.float32):
        raise SystemExit(f"this torch or CPU has no oneDNN packed linear in {args.dtype} "
                         "(torch.ops.mkldnn._linear_pointwise; bf16 needs AVX512-BF16, AMX or AVX-512 BW/VL/DQ)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    bf16 = args.dtype == "bf16"
    print(f"torch {torch.__version__}, {args.dtype}, {args.threads} threads; ms per call (best of {args.repeats})\n")
    print("| rows | weight | F.linear | packed | speed-up | input grad (plain) | outputs identical |")
    print("|---|---|---|---|---|---|---|")
    for rows in args.rows:
        layer_plain = layer_packed = 0.0
        for name, (out, inp) in SHAPES.items():
            dtype = torch.bfloat16 if bf16 else torch.float32
            w, x, g = torch.randn(out, inp).to(dtype), torch.randn(rows, inp), torch.randn(rows, out).to(dtype)
            packed = torch.ops.mkldnn._reorder_linear_weight(w, 16)
            calls = max(3, int((2e9 if bf16 else 2e8) / (2 * rows * out * inp)))  # ~0.1-1 s per loop

            def plain_call():
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
                    return torch.nn.functional.linear(x, w)

            def packed_call():  # the input cast autocast would do, as `PackedLinear` does it
                return torch.ops.mkldnn._linear_pointwise(x.to(dtype), packed, None, "none", [], "")

            same = torch.equal(plain_call(), packed_call())
            plain = best_ms(plain_call, calls, args.repeats)
            fast = best_ms(packed_call, calls, args.repeats)
            grad = best_ms(lambda: g.matmul(w), calls, args.repeats)
            print(f"| {rows} | {name} {out}x{inp} | {plain:.3f} | {fast:.3f} | {plain / fast:.2f}x | {grad:.3f} "
                  f"| {'yes' if same else 'no'} |")
            layer_plain += PER_LAYER.get(name, 0) * plain
            layer_packed += PER_LAYER.get(name, 0) * fast
        print(f"| {rows} | one decoder layer's 7 projections | {layer_plain:.3f} | {layer_packed:.3f} | "
              f"{layer_plain / layer_packed:.2f}x | | |")


if __name__ == "__main__":
    main()
