"""The benchmark tables of RESULTS.md and the README, and docs/benchmarks.png, from the JSON the
benchmark scripts write (benchmarks/results/*.json), never copied by hand.

A generated block sits between two marker lines:

    <!-- results:NAME:begin -->
    ...
    <!-- results:NAME:end -->

NAME is a file of benchmarks/results/ without ``.json`` (``logps_headline``): the block is the run's
command, date and machine, then what the run printed, rendered by the script's own ``render``
from its JSON; NAME.summary is instead the one sentence of the script's ``summary``, with the
command and the date. Two blocks of the README are not one file's: ``headline`` is the table of
``logps_headline.json`` with one line saying where it comes from, and ``summaries`` is one
bullet per run of SUMMARIES. Text outside the markers is left alone.

    python benchmarks/report.py           # rewrite the blocks of RESULTS.md and README.md, draw the plot
    python benchmarks/report.py --check   # exit 1 if a block differs from what its JSON gives

The plot: forward + backward time and the peak memory above the inputs (the gradient included, its
size drawn for reference) against the vocabulary size, one line per method, from
``python benchmarks/logps.py --vocab-sweep`` (``logps_vocab_sweep.json``).
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import json
import re
import sys
import textwrap
from pathlib import Path
from typing import Dict, List, Optional, Tuple

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
RESULTS = BENCHMARKS / "results"
DOCS = [BENCHMARKS / "RESULTS.md", ROOT / "README.md"] + [
    ROOT / "docs" / f"{page}.md" for page in ("benchmarks", "fused-linear", "packing", "trl")
]
PLOT = ROOT / "docs" / "benchmarks.png"
SWEEP = "logps_vocab_sweep"
HEADLINE = "logps_headline"
SUMMARIES = ("fused_linear", "trainer", "packing")  # the README's bullets under its headline
BLOCK = re.compile(
    r"^<!-- results:(?P<name>[\w.-]+):begin -->\n(?P<body>.*?)^<!-- results:(?P=name):end -->$", re.S | re.M
)
LABELS = {
    "log_softmax": "log_softmax + gather",
    "selective": "selective (gather - logsumexp)",
    "torch.compile": "torch.compile(log_softmax + gather)",
    "simper_rs": "simper_rs (fused kernel)",
}


def load(results: Path = RESULTS) -> Dict[str, dict]:
    """Every run's JSON in `results`, by file name without ``.json``."""
    return {path.stem: json.loads(path.read_text()) for path in sorted(Path(results).glob("*.json"))}


def script(benchmark: str):
    """The benchmark script benchmarks/<benchmark>.py as a module (for its ``render``)."""
    name = f"_benchmarks_{benchmark}"
    if name not in sys.modules:
        if str(BENCHMARKS) not in sys.path:
            sys.path.insert(0, str(BENCHMARKS))  # packing.py imports trainer.py
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{benchmark}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _when(data: dict) -> str:
    return data["date"].replace("T", " ")[:16] + " UTC"


def _load_average(data: dict) -> str:
    start, end = data.get("load_average_start"), data.get("load_average_end")
    if start is None:
        return ""
    return f"; load average {start:g} at the start" + (f", {end:g} at the end" if end is not None else "")


def machine_line(data: dict) -> str:
    m = data["machine"]
    line = f"{m['cpu']}, {m['cores']} cores"
    if m.get("row_code"):
        line += f" (row code {m['row_code']})"
    return line + f", torch {m['torch']}, simper_rs {m['simper_rs']}"


def provenance(name: str, data: dict) -> str:
    """The line above a generated block: the command, when, on what, and the JSON's path."""
    return (
        f"`{data['command']}`, {_when(data)}: {machine_line(data)}{_load_average(data)} "
        f"(`benchmarks/results/{name}.json`)"
    )


def render_headline(data: dict) -> str:
    """The README's headline: the kernel table of ``logps.py --headline``, and where it comes from."""
    bench = script("logps").bench
    return "\n".join(
        [
            *bench.TABLE_HEADER,
            *map(bench.table_row, data["rows"]),
            "",
            f"Measured by `{data['command']}` on {_when(data)[:10]}: {machine_line(data)}{_load_average(data)}. "
            f"Generated from `benchmarks/results/{HEADLINE}.json` by `benchmarks/report.py`.",
        ]
    )


def render_summary(data: dict, bullet: bool = False) -> str:
    """The run's one sentence (its script's ``summary``) with the command and the date, wrapped at
    100 columns, as a paragraph or a list item."""
    sentence = script(data["benchmark"]).summary(data)
    text = f"{sentence} (`{data['command']}`, {_when(data)[:10]})"
    indent = ("- ", "  ") if bullet else ("", "")
    return textwrap.fill(text, 100, initial_indent=indent[0], subsequent_indent=indent[1], break_on_hyphens=False)


def _results_for(name: str, results: Dict[str, dict]) -> dict:
    if name not in results:
        raise KeyError(f"no benchmarks/results/{name}.json")
    return results[name]


def render(name: str, results: Dict[str, dict]) -> str:
    """The text of block NAME (without its marker lines)."""
    if name == "headline":
        body = render_headline(_results_for(HEADLINE, results))
    elif name == "summaries":
        body = "\n".join(render_summary(_results_for(source, results), bullet=True) for source in SUMMARIES)
    elif name.endswith(".summary"):
        body = render_summary(_results_for(name.removesuffix(".summary"), results))
    else:
        data = _results_for(name, results)
        body = provenance(name, data) + "\n\n" + script(data["benchmark"]).render(data)
    return f"\n{body}\n\n"


def block_names(text: str) -> List[str]:
    return [m["name"] for m in BLOCK.finditer(text)]


def update(text: str, results: Dict[str, dict]) -> Tuple[str, List[str]]:
    """`text` with every generated block rendered anew, and the blocks that could not be."""
    problems: List[str] = []

    def replace(match) -> str:
        try:
            body = render(match["name"], results)
        except KeyError as e:
            problems.append(f"results:{match['name']}: {e.args[0]}")
            return match[0]
        return match[0][: match.start("body") - match.start()] + body + f"<!-- results:{match['name']}:end -->"

    new = BLOCK.sub(replace, text)
    for marker in re.findall(r"^<!-- results:([\w.-]+):(?:begin|end) -->$", text, re.M):
        if marker not in block_names(text):
            problems.append(f"results:{marker}: a begin or end marker without its pair")
    return new, sorted(set(problems))


def check(docs, results: Dict[str, dict], plot: Optional[Path] = PLOT) -> List[str]:
    """What differs between the documents' generated blocks and their JSON (empty: all equal),
    and a missing plot (`plot` None: not looked at)."""
    problems = []
    for doc in map(Path, docs):
        if not doc.exists():
            continue
        text = doc.read_text()
        new, errors = update(text, results)
        problems += [f"{doc.name}: {e}" for e in errors]
        if new != text:
            diff = difflib.unified_diff(
                text.splitlines(),
                new.splitlines(),
                f"{doc.name} (as it is)",
                f"{doc.name} (from the JSON)",
                lineterm="",
            )
            problems.append(f"{doc.name}: generated blocks differ from the JSON:\n" + "\n".join(diff))
    if plot is not None and SWEEP in results and not Path(plot).exists():
        problems.append(f"{plot}: missing (python benchmarks/report.py draws it from results/{SWEEP}.json)")
    return problems


STYLES = {"log_softmax": ("o", "-"), "selective": ("s", "--"), "torch.compile": ("D", ":"), "simper_rs": ("^", "-")}


def draw(data: dict, path: Path) -> None:
    """Time and peak memory above the inputs against V, one line per method, and the gradient's
    size (what every method must return) for reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in data["rows"] if "error" not in r]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, (time_ax, memory_ax) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for method in methods:
        points = sorted((r for r in rows if r["method"] == method), key=lambda r: r["vocab"])
        vocab = [r["vocab"] for r in points]
        marker, line = STYLES.get(method, ("o", "-"))
        style = dict(marker=marker, linestyle=line, label=LABELS.get(method, method))
        time_ax.plot(vocab, [r["seconds"] * 1e3 for r in points], **style)
        memory_ax.plot(vocab, [r["step_peak_bytes"] / 2**20 for r in points], **style)
    gradient = sorted({(r["vocab"], r["logits_bytes"]) for r in rows})
    memory_ax.plot(
        [v for v, _ in gradient],
        [b / 2**20 for _, b in gradient],
        color="black",
        linestyle=":",
        linewidth=1.2,
        zorder=3,
        label="the gradient alone (the logits' size)",
    )
    vocabs = sorted({r["vocab"] for r in rows})
    for ax in (time_ax, memory_ax):
        ax.set_xlabel("vocabulary size V")
        ax.set_xticks(vocabs, [str(v) for v in vocabs])
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    time_ax.set_ylabel("ms (median)")
    time_ax.set_title("forward + backward time")
    memory_ax.set_ylabel("MiB")
    memory_ax.set_title("peak memory above the inputs (gradient included)")
    s = data["settings"]
    fig.suptitle(
        f"Masked sequence log-probs on CPU, N = {s['positions']} positions, {s['dtype']}, each method in its own "
        f"process\n{machine_line(data)}; {_when(data)[:10]}, `{data['command']}`",
        fontsize=9,
    )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block differs from its JSON")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the JSON folder (default: benchmarks/results)")
    parser.add_argument(
        "--doc",
        type=Path,
        action="append",
        help="a markdown file with generated blocks (default: RESULTS.md, README.md, docs/benchmarks.md)",
    )
    parser.add_argument("--plot", type=Path, default=PLOT, help="where to draw the plot (default: docs/benchmarks.png)")
    parser.add_argument("--no-plot", action="store_true", help="do not draw the plot")
    args = parser.parse_args(argv)
    docs, results = args.doc or DOCS, load(args.results)
    if args.check:
        problems = check(docs, results, None if args.no_plot else args.plot)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print("run `python benchmarks/report.py` to regenerate them from benchmarks/results/", file=sys.stderr)
            return 1
        blocks = sum(len(block_names(Path(d).read_text())) for d in docs if Path(d).exists())
        print(f"{blocks} generated blocks match benchmarks/results/")
        return 0
    status = 0
    for doc in map(Path, docs):
        if not doc.exists():
            continue
        text = doc.read_text()
        new, problems = update(text, results)
        for problem in problems:
            print(f"{doc.name}: {problem}", file=sys.stderr)
            status = 1
        if new != text:
            doc.write_text(new)
        print(f"{doc}: {len(block_names(new))} generated blocks" + (" (rewritten)" if new != text else " (unchanged)"))
    if SWEEP in results and not args.no_plot:
        draw(results[SWEEP], args.plot)
        print(f"{args.plot}: drawn from results/{SWEEP}.json")
    return status


if __name__ == "__main__":
    sys.exit(main())
