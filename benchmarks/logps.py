"""Forward+backward time and peak memory of the masked sequence log-prob reduction on CPU:
the fused Rust kernel against log_softmax + gather and TRL's selective log-softmax, each method
in its own process, side by side in one run (the code is in simper_rs/bench.py).

    python benchmarks/logps.py                 # the sizes of RESULTS.md
    python benchmarks/logps.py --quick         # a small size, seconds
"""
import argparse

from simper_rs import bench

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small size, for a smoke run")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    bench.table(bench.QUICK if args.quick else bench.SIZES, repeats=args.repeats)
