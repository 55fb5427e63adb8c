"""Forward+backward time and peak memory of the masked log-prob reduction on one CUDA GPU: the
fused CUDA kernel against log_softmax + gather, the logsumexp-based selective log-softmax, and
torch.compile of log_softmax + gather, side by side in one process.

    python benchmarks/gpu.py                       # (N, V) = (16384, 128256), bfloat16 and float32
    python benchmarks/gpu.py --rows 2048 --json out.json  # (default: benchmarks/results/gpu.json)

The floor: a fused op must read the logits once forward, and read them once and write their
gradient once backward, so fwd+bwd moves at least 3·N·V·bytes. "of floor" is the floor's time at
the GPU's peak memory bandwidth divided by the measured time (1.0 would be perfect); the
device-to-device copy bandwidth measured here is printed as a practical ceiling.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

import simper_rs
from simper_rs.cli.bench import Results

RESULTS = Path(__file__).resolve().parent / "results"
PEAK_BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12}  # bytes/s, the SXM data sheets


def copy_bandwidth(device) -> float:
    """Bytes read + written per second by a 4 GiB device-to-device copy (median of 10)."""
    src = torch.empty(1 << 30, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    seconds = time_cuda(lambda: dst.copy_(src), repeats=10)
    return 2 * src.numel() * 4 / seconds


def time_cuda(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def masked_mean(tok, labels):
    mask = labels[:, 1:] != -100
    return (tok * mask).sum() / mask.sum()


def log_softmax_gather(logits, labels):
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    index = labels[:, 1:].clamp(min=0).unsqueeze(-1)
    return masked_mean(logp.gather(-1, index).squeeze(-1), labels)


def selective_logsumexp(logits, labels):
    # TRL's selective_log_softmax: gather - logsumexp, one batch row at a time to bound memory.
    shifted = logits[:, :-1]
    index = labels[:, 1:].clamp(min=0).unsqueeze(-1)
    picked = shifted.gather(-1, index).squeeze(-1).float()
    lse = torch.stack(
        [torch.logsumexp(row.float() if row.dtype == torch.float32 else row, dim=-1) for row in shifted]
    ).float()
    return masked_mean(picked - lse, labels)


def fused_kernel(logits, labels):
    return masked_mean(simper_rs.token_logps(logits, labels), labels)


def measure(method, logits, labels, repeats):
    """Median fwd+bwd seconds and peak bytes allocated above the inputs (gradient included)."""

    def step():
        logits.grad = None
        method(logits, labels).backward()

    step()  # compile / warm up
    torch.cuda.synchronize()
    logits.grad = None
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    seconds = time_cuda(step, repeats)
    logits.grad = None
    return seconds, peak


def fused_memory_split(logits, labels):
    """Peak bytes above the live set during the fused forward alone and the backward alone."""
    logits.grad = None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    loss = fused_kernel(logits, labels)
    forward = torch.cuda.max_memory_allocated() - base
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    loss.backward()
    backward = torch.cuda.max_memory_allocated() - base
    logits.grad = None
    return forward, backward


def fused_kernel_times(logits, labels, repeats):
    """Seconds of the forward op alone (label checks included) and of the backward op alone."""
    op, op_backward = torch.ops.simper_rs.fused_token_logps, torch.ops.simper_rs.fused_token_logps_backward
    detached = logits.detach()
    tok, lse, _, _ = op(detached, labels, -100, True, False)
    upstream = torch.ones_like(tok)
    forward = time_cuda(lambda: op(detached, labels, -100, True, False), repeats)
    backward = time_cuda(lambda: op_backward(upstream, detached, labels, lse, -100, True), repeats)
    return forward, backward


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def _num(x, scale: float = 1.0) -> str:
    return f"{x * scale:.2f}" if x is not None else "nan"


def title_lines(data: dict) -> list:
    gpu = data["gpu"]
    return [
        f"# {gpu['name']}, torch {data['machine']['torch']}, simper_rs {data['machine']['simper_rs']}",
        f"device-to-device copy: {gpu['copy_bandwidth'] / 1e12:.2f} TB/s (read + write); data-sheet peak: "
        f"{_num(gpu['peak_bandwidth'], 1e-12)} TB/s",
    ]


TABLE_HEADER = [
    "| method | fwd+bwd | vs log_softmax | peak memory (+grad) | achieved | of floor |",
    "|---|---|---|---|---|---|",
]


def section_lines(section: dict, peak_bw) -> list:
    at_peak = section["floor_bytes"] / peak_bw * 1e3 if peak_bw else None
    return [
        "",
        f"## {section['dtype']}, (N, V) = ({section['rows']}, {section['vocab']}); logits {gib(section['logits_bytes'])}, "
        f"floor {section['floor_bytes'] / 1e9:.1f} GB = {_num(at_peak)} ms at peak",
        *TABLE_HEADER,
    ]


def method_row(row: dict) -> str:
    if "error" in row:
        return f"| {row['method']} | failed: {row['error']} | | | | |"
    return (
        f"| {row['method']} | {row['seconds'] * 1e3:.2f} ms | {row['vs_log_softmax']:.2f}x | {gib(row['peak_bytes'])} | "
        f"{row['achieved_bytes_per_s'] / 1e12:.2f} TB/s | {_num(row['floor_fraction'])} |"
    )


def split_lines(row: dict) -> list:
    rows = row["rows"]
    return [
        f"simper_rs memory: forward +{gib(row['forward_bytes'])} ({row['forward_bytes'] / rows:.0f} B per row), "
        f"backward +{gib(row['backward_bytes'])} (the gradient alone is {gib(row['grad_bytes'])})",
        f"simper_rs kernels alone: forward {row['forward_seconds'] * 1e3:.2f} ms "
        f"({row['row_bytes'] / row['forward_seconds'] / 1e12:.2f} TB/s), backward {row['backward_seconds'] * 1e3:.2f} ms "
        f"({2 * row['row_bytes'] / row['backward_seconds'] / 1e12:.2f} TB/s)",
    ]


def render(data: dict) -> str:
    """What the run printed, from its JSON (benchmarks/report.py)."""
    lines = title_lines(data)
    for section in data["sections"]:
        lines += section_lines(section, data["gpu"]["peak_bandwidth"])
        rows = [r for r in data["rows"] if r["dtype"] == section["dtype"]]
        lines += [method_row(r) for r in rows if r["method"] != "simper_rs split"]
        lines += [line for r in rows if r["method"] == "simper_rs split" for line in split_lines(r)]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16384, help="N, labelled positions (batch 8 × seq)")
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    parser.add_argument(
        "--json", default=str(RESULTS / "gpu.json"), help="where to write the results (default: %(default)s)"
    )
    args = parser.parse_args()

    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    peak_bw = next((bw for key, bw in PEAK_BANDWIDTH.items() if key in name), None)
    results = Results("gpu", None, rows=args.rows, vocab=args.vocab, dtypes=args.dtypes, repeats=args.repeats)
    results.data.update(
        gpu={"name": name, "copy_bandwidth": copy_bandwidth(device), "peak_bandwidth": peak_bw}, sections=[]
    )
    print("\n".join(title_lines(results.data)))
    methods = {
        "log_softmax + gather": log_softmax_gather,
        "selective (logsumexp)": selective_logsumexp,
        "simper_rs CUDA kernel": fused_kernel,
    }
    if not args.no_compile:
        methods["torch.compile(log_softmax + gather)"] = torch.compile(log_softmax_gather, dynamic=False)
    batch = 8
    seq = args.rows // batch + 1  # the shift drops one position per row
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        g = torch.Generator(device=device).manual_seed(0)
        logits = torch.empty(batch, seq, args.vocab, device=device, dtype=dtype).normal_(0, 2, generator=g)
        labels = torch.randint(0, args.vocab, (batch, seq), device=device, generator=g)
        logits.requires_grad_(True)
        rows = batch * (seq - 1)
        floor_bytes = 3 * rows * args.vocab * logits.element_size()
        section = dict(
            dtype=dtype_name,
            rows=rows,
            vocab=args.vocab,
            logits_bytes=logits.numel() * logits.element_size(),
            floor_bytes=floor_bytes,
        )
        results.data["sections"].append(section)
        print("\n".join(section_lines(section, peak_bw)))
        base = None
        for label, method in methods.items():
            row = dict(dtype=dtype_name, rows=rows, vocab=args.vocab, method=label)
            try:
                seconds, peak = measure(method, logits, labels, args.repeats)
            except Exception as err:  # a baseline that cannot run (out of memory, compile error)
                row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:80]}"
                print(method_row(results.add(row)))
                torch.cuda.empty_cache()
                continue
            if label == "log_softmax + gather":
                base = seconds
            row.update(
                seconds=seconds,
                vs_log_softmax=(base or seconds) / seconds,
                peak_bytes=peak,
                floor_fraction=(floor_bytes / peak_bw) / seconds if peak_bw else None,
                achieved_bytes_per_s=floor_bytes / seconds,
            )
            print(method_row(results.add(row)))
        forward, backward = fused_memory_split(logits, labels)
        fwd_s, bwd_s = fused_kernel_times(logits, labels, args.repeats)
        split = dict(
            dtype=dtype_name,
            rows=rows,
            method="simper_rs split",
            forward_bytes=forward,
            backward_bytes=backward,
            grad_bytes=logits.numel() * logits.element_size(),
            row_bytes=rows * args.vocab * logits.element_size(),
            forward_seconds=fwd_s,
            backward_seconds=bwd_s,
        )
        print("\n".join(split_lines(results.add(split))))
        del logits, labels
        torch.cuda.empty_cache()
    results.write(args.json)


if __name__ == "__main__":
    main()
