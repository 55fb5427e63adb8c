"""Forward+backward time and peak memory of the masked sequence log-prob reduction on CPU:
the fused Rust kernel against log_softmax + gather, TRL's selective log-softmax and torch.compile
of log_softmax + gather, beside the memory floor (a read plus a copy of the logits' size into
fresh memory) and the bandwidth floor (the same copy into mapped memory) measured in the same
run; each method in its own process (the code is in simper_rs/bench.py).

    python benchmarks/logps.py                 # the sizes of RESULTS.md
    python benchmarks/logps.py --headline      # (2048, 32000) float32 only, with ratios to the floor
    python benchmarks/logps.py --breakdown     # the fused op's forward and backward apart, per row code
    python benchmarks/logps.py --quick         # a small size, seconds
"""
import argparse

from simper_rs import bench

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small size, for a smoke run")
    parser.add_argument("--headline", action="store_true", help="only (2048, 32000) float32")
    parser.add_argument("--breakdown", action="store_true", help="time the fused op's forward and backward apart, beside the floor's pieces")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    sizes = bench.QUICK if args.quick else bench.HEADLINE if args.headline else bench.SIZES
    if args.breakdown:
        bench.breakdown(sizes if (args.quick or args.headline) else bench.SIZES[:2], repeats=args.repeats)
    else:
        bench.table(sizes, repeats=args.repeats)
