"""What denormal floats cost a CPU matrix product, flushed to zero vs kept, side by side in one run.

    .venv/bin/python tests/benchmarks/bench_denormals.py [--threads 1] [--repeats 50]

The shapes are LUDP's W1 weight gradient on ML-100K (grad [B, 64] transposed times the users' mean text features
[B, 384], B ≈ 680 distinct users per batch). ``normal`` scales the gradient like an ordinary one; ``denormal`` like a
modality whose attention weight has collapsed to ~1e-30, so that the products fall below float32's smallest normal
(~1.2e-38). Each case is timed with denormals kept and with them flushed (``trainer.loop.denormals_flushed``, what
``trainer fit`` does on a CPU); the median microseconds and the kept/flushed ratios are printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def median_us(function, repeats: int) -> float:
    function()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--users", type=int, default=680)
    args = parser.parse_args()

    import torch

    from trainer.loop import denormals_are_flushed, denormals_flushed

    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    features = torch.rand(args.users, 384, generator=generator) * 1e-2
    gradient = torch.randn(args.users, 64, generator=generator)
    cases = {"normal": gradient * 1e-4, "denormal": gradient * 1e-36}
    results: dict[str, dict[str, float]] = {}
    for name, grad in cases.items():
        kept = median_us(lambda grad=grad: grad.t() @ features, args.repeats)
        with denormals_flushed(torch.device("cpu")):
            assert denormals_are_flushed()
            flushed = median_us(lambda grad=grad: grad.t() @ features, args.repeats)
        results[name] = {"kept": kept, "flushed": flushed}
    print(f"[64, {args.users}] @ [{args.users}, 384] float32, {args.threads} thread(s), median of {args.repeats}")
    for name, times in results.items():
        print(f"{name:9s} kept {times['kept']:10.1f} us  flushed {times['flushed']:8.1f} us  "
              f"kept/flushed {times['kept'] / times['flushed']:6.1f}x")
    print(f"denormal/normal with denormals kept: {results['denormal']['kept'] / results['normal']['kept']:.1f}x; "
          f"flushed: {results['denormal']['flushed'] / results['normal']['flushed']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
