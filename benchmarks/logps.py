"""Forward+backward time and peak memory of the masked sequence log-prob reduction on CPU:
the fused Rust kernel against log_softmax + gather, TRL's selective log-softmax and torch.compile
of log_softmax + gather, beside the memory floor (a read plus a copy of the logits' size into
fresh memory) and the bandwidth floor (the same copy into mapped memory) measured in the same
run; each method in its own process (the code is in simper_rs/cli/bench.py).

    python benchmarks/logps.py                 # the sizes of RESULTS.md
    python benchmarks/logps.py --headline      # (2048, 32000) float32 only, with ratios to the floor
    python benchmarks/logps.py --breakdown     # the fused op's forward and backward apart, per row code
    python benchmarks/logps.py --vocab-sweep   # V = 8192 ... 128256 at N = 1024 (docs/benchmarks.png)
    python benchmarks/logps.py --quick         # a small size, seconds

Each run also writes its rows as JSON, by default benchmarks/results/logps.json (logps_headline,
logps_breakdown, logps_vocab_sweep for the other modes; --quick writes none unless --json is given);
benchmarks/report.py makes RESULTS.md's tables, the README's headline and the plot from them.
"""

import argparse
from pathlib import Path

from simper_rs.cli import bench

RESULTS = Path(__file__).resolve().parent / "results"
render = bench.render  # what benchmarks/report.py renders this script's JSON with


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small size, for a smoke run")
    parser.add_argument("--headline", action="store_true", help="only (2048, 32000) float32")
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="time the fused op's forward and backward apart, beside the floor's pieces",
    )
    parser.add_argument(
        "--vocab-sweep",
        action="store_true",
        help=f"log_softmax, selective and simper_rs at V = {', '.join(map(str, bench.SWEEP_VOCABS))}, "
        f"N = {bench.SWEEP_POSITIONS}, float32",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--json", metavar="PATH", help="where to write the rows (default: benchmarks/results/logps*.json)"
    )
    args = parser.parse_args()
    sizes = bench.QUICK if args.quick else bench.HEADLINE if args.headline else bench.SIZES
    mode = (
        "breakdown" if args.breakdown else "vocab_sweep" if args.vocab_sweep else "headline" if args.headline else None
    )
    default = None if args.quick else RESULTS / ("logps.json" if mode is None else f"logps_{mode}.json")
    if args.vocab_sweep:
        positions, vocabs = (256, [1024, 4096]) if args.quick else (bench.SWEEP_POSITIONS, bench.SWEEP_VOCABS)
        results = bench.Results("logps", mode, repeats=args.repeats, positions=positions, dtype="float32")
        bench.sweep(vocabs, positions, repeats=args.repeats, results=results)
    elif args.breakdown:
        sizes = sizes if (args.quick or args.headline) else bench.SIZES[:2]
        results = bench.Results("logps", mode, repeats=args.repeats, sizes=sizes)
        bench.breakdown(sizes, repeats=args.repeats, results=results)
    else:
        results = bench.Results("logps", mode, repeats=args.repeats, sizes=sizes)
        bench.table(sizes, repeats=args.repeats, results=results)
    results.write(args.json or default)


if __name__ == "__main__":
    main()
