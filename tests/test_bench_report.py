"""The benchmark tables are generated from the JSON the benchmarks write (benchmarks/report.py):
the blocks of benchmarks/RESULTS.md, docs/benchmarks.md and the README's headline and summaries
equal what their JSON renders to,
and the renderer does what it says on a small JSON. No benchmark runs here.

When a block differs: `python benchmarks/report.py` regenerates the blocks from
benchmarks/results/*.json (after a benchmark run, that is the step that updates the docs).
"""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"
README = ROOT / "README.md"


def _load_report():
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "benchmarks" / "report.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_report"] = module
    spec.loader.exec_module(module)
    return module


report = _load_report()


def test_the_generated_blocks_equal_their_json():
    problems = report.check(report.DOCS, report.load())
    assert not problems, "\n\n".join(problems) + "\n\nrun: python benchmarks/report.py"


def test_results_md_and_the_readme_have_their_generated_blocks():
    assert {"logps_headline", "logps_vocab_sweep"} <= set(report.block_names(RESULTS_MD.read_text()))
    assert {"headline", "summaries"} <= set(report.block_names(README.read_text()))


def test_every_json_renders():
    """Each file in benchmarks/results/ renders with its script's renderer (a script changed
    without its JSON, or the reverse, fails here rather than in a document)."""
    for name, data in report.load().items():
        assert data["rows"], name
        assert report.render(name, {name: data}).strip(), name


def test_the_readme_summaries_are_one_bullet_per_run_with_its_command():
    results = report.load()
    text = report.render("summaries", results)
    bullets = [line for line in text.splitlines() if line.startswith("- ")]
    assert len(bullets) == len(report.SUMMARIES)
    for name in report.SUMMARIES:
        assert f"`{results[name]['command']}`" in " ".join(text.split()), name
    assert all(len(line) <= 100 for line in text.splitlines()), text


def small_run(**overrides) -> dict:
    """A logps.py --headline JSON with two rows, as bench.Results writes it."""
    data = {
        "benchmark": "logps",
        "mode": "headline",
        "command": "python benchmarks/logps.py --headline",
        "date": "2026-01-02T03:04:05Z",
        "machine": {"cpu": "Test CPU", "cores": 2, "row_code": "AVX2", "torch": "2.13.0", "simper_rs": "0.1.0"},
        "load_average_start": 1.5,
        "load_average_end": 2.0,
        "settings": {"repeats": 7, "sizes": [[2048, 32000, "float32"]]},
        "rows": [
            {
                "n": 2048,
                "vocab": 32000,
                "dtype": "float32",
                "method": "log_softmax",
                "seconds": 0.377,
                "vs_log_softmax": 1.0,
                "vs_floor": None,
                "vs_bandwidth_floor": None,
                "forward_peak_bytes": 524_075_008,
                "backward_peak_bytes": 524_075_008,
                "step_peak_bytes": 786_432_000,
                "logits_bytes": 262_406_144,
            },
            {
                "n": 2048,
                "vocab": 32000,
                "dtype": "float32",
                "method": "simper_rs",
                "seconds": 0.0491,
                "vs_log_softmax": 7.678,
                "vs_floor": None,
                "vs_bandwidth_floor": None,
                "forward_peak_bytes": 0,
                "backward_peak_bytes": 263_192_576,
                "step_peak_bytes": 263_196_672,
                "logits_bytes": 262_406_144,
            },
            {"n": 2048, "vocab": 32000, "dtype": "float32", "method": "selective", "error": "MemoryError"},
        ],
    }
    data.update(overrides)
    return data


EXPECTED_TABLE = """\
CPU threads: 2; fwd+bwd median of 7; peaks are RSS above the inputs

| N | V | dtype | method | fwd+bwd | vs log_softmax | vs floor | vs bandwidth floor | fwd peak | bwd peak (x logits) |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
| 2048 | 32000 | float32 | log_softmax | 377 ms | 1.00x |  |  | 499.8 MiB | 499.8 MiB (2.00x) |
| 2048 | 32000 | float32 | simper_rs | 49 ms | 7.68x |  |  | 0 B | 251.0 MiB (1.00x) |
| 2048 | 32000 | float32 | selective | failed: MemoryError | | | | | |"""


def test_the_renderer_on_a_small_json():
    assert report.script("logps").render(small_run()) == EXPECTED_TABLE
    block = report.render("small", {"small": small_run()})
    assert block == (
        "\n`python benchmarks/logps.py --headline`, 2026-01-02 03:04 UTC: Test CPU, 2 cores (row code AVX2), "
        "torch 2.13.0, simper_rs 0.1.0; load average 1.5 at the start, 2 at the end "
        "(`benchmarks/results/small.json`)\n\n" + EXPECTED_TABLE + "\n\n"
    )
    headline = report.render("headline", {"logps_headline": small_run()})
    assert EXPECTED_TABLE.split("\n", 2)[2] in headline and "CPU threads" not in headline
    assert "Generated from `benchmarks/results/logps_headline.json`" in headline


def test_check_and_regenerate_a_document(tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    (results / "small.json").write_text(json.dumps(small_run()))
    doc = tmp_path / "doc.md"
    stale = (
        "# Title\n\nprose\n\n<!-- results:small:begin -->\n| old | table |\n<!-- results:small:end -->\n\nmore prose\n"
    )
    doc.write_text(stale)
    args = ["--results", str(results), "--doc", str(doc), "--no-plot"]

    assert report.main(["--check", *args]) == 1
    assert "generated blocks differ" in capsys.readouterr().err
    assert doc.read_text() == stale  # --check changes nothing

    assert report.main(args) == 0
    text = doc.read_text()
    assert text.startswith(
        "# Title\n\nprose\n\n<!-- results:small:begin -->\n\n`python benchmarks/logps.py --headline`"
    )
    assert text.endswith(EXPECTED_TABLE + "\n\n<!-- results:small:end -->\n\nmore prose\n")
    assert report.main(["--check", *args]) == 0

    # A number changed by hand in the generated block is caught.
    doc.write_text(text.replace("| 377 ms |", "| 370 ms |"))
    assert report.main(["--check", *args]) == 1
    assert "-| 2048 | 32000 | float32 | log_softmax | 370 ms |" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text, problem",
    [
        ("<!-- results:missing:begin -->\n<!-- results:missing:end -->\n", "no benchmarks/results/missing.json"),
        ("<!-- results:small:begin -->\nno end marker\n", "a begin or end marker without its pair"),
    ],
)
def test_a_block_without_json_or_without_its_end_is_reported(text, problem):
    new, problems = report.update(text, {"small": small_run()})
    assert new == text and len(problems) == 1 and problem in problems[0]
