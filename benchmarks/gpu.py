"""Forward+backward time and peak memory on one CUDA GPU, side by side in one process.

The logits tables: the masked log-prob reduction by the fused CUDA kernel against log_softmax +
gather, the logsumexp-based selective log-softmax, and torch.compile of log_softmax + gather.
The floor: a fused op must read the logits once forward, and read them once and write their
gradient once backward, so fwd+bwd moves at least 3·N·V·bytes. "of floor" is the floor's time at
the GPU's peak memory bandwidth divided by the measured time (1.0 would be perfect); the
device-to-device copy bandwidth measured here is printed as a practical ceiling.

The fused-linear table (hidden states and the lm_head weight in, no logits kept), bfloat16:
simper_rs's ``linear_sequence_logps`` (logits recomputed in backward) and its SimPER loss with
the gradient computed in the forward, against the materialised logits with log_softmax + gather,
TRL's ``ChunkedLogProbFunction`` (its Triton kernel on CUDA; log-probs, as simper_rs's op) and
Liger-Kernel's ``LigerFusedLinearSimPOLoss`` (a loss, as simper_rs's SimPER loss). Every position
is scored (no masked prompt), since the peers score every position they are given. "extra peak"
is the peak allocated above the inputs, less the gradients of the hidden states and the weight,
which every method returns. A peer that is not installed gives a "skipped" row:
benchmarks/gpu_check.sh installs the wheels carried in .whl/ (scripts/gpu_wheels.sh fetches them).

    python benchmarks/gpu.py            # (N, V) = (16384, 128256), bf16 and f32; fused linear at H = 4096
    python benchmarks/gpu.py --rows 2048 --json out.json  # (default: benchmarks/results/gpu.json)
    python benchmarks/gpu.py --device cpu --rows 64 --vocab 1000 --hidden 32 --repeats 1 --json /tmp/gpu.json
                                        # a dry run of the script on the CPU: wall-clock times, no memory
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Tuple, TypeVar

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fused_linear import Skipped, liger_fused_simpo, trl_token_logps  # noqa: E402  (benchmarks/fused_linear.py: the peers)

import simper_rs  # noqa: E402
from simper_rs.cli.bench import Results  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PEAK_BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12}  # bytes/s, the SXM data sheets
BATCH = 8  # sequences; N = BATCH x (positions per sequence - 1)
T = TypeVar("T")


class Device:
    """Timing and memory where the benchmark runs: CUDA events and the caching allocator's peak on
    a GPU; the wall clock and no memory figures on the CPU (a dry run of the script)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"

    def name(self) -> str:
        return torch.cuda.get_device_name(self.device) if self.cuda else "CPU (dry run)"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def seconds(self, fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
        """The median time of `fn` over `repeats` calls, after `warmup` calls."""
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                start_s = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start_s)
        return statistics.median(times)

    def peak_above(self, fn: Callable[[], T]) -> Tuple[T, Optional[int]]:
        """What `fn` returns, and the bytes allocated at its peak above the level before it (None
        on the CPU)."""
        if not self.cuda:
            return fn(), None
        self.sync()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        out = fn()
        self.sync()
        return out, torch.cuda.max_memory_allocated(self.device) - base

    def release(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()


def copy_bandwidth(dev: Device) -> Optional[float]:
    """Bytes read + written per second by a 4 GiB device-to-device copy (median of 10); None on the CPU."""
    if not dev.cuda:
        return None
    src = torch.empty(1 << 30, dtype=torch.float32, device=dev.device)
    dst = torch.empty_like(src)
    seconds = dev.seconds(lambda: dst.copy_(src), repeats=10)
    return 2 * src.numel() * 4 / seconds


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


def measure(dev: Device, method, leaves, repeats: int):
    """Median fwd+bwd seconds of ``method().backward()`` and its peak bytes allocated above the
    inputs (the leaves' gradients included)."""

    def clear_grads():
        for leaf in leaves:
            leaf.grad = None

    def step():
        clear_grads()
        method().backward()

    step()  # compile / warm up
    clear_grads()  # so that the peak is measured above the inputs alone
    _, peak = dev.peak_above(step)
    seconds = dev.seconds(step, repeats)
    clear_grads()
    return seconds, peak


def fused_memory_split(dev: Device, logits, labels):
    """Peak bytes above the live set during the fused forward alone and the backward alone."""
    logits.grad = None
    loss, forward = dev.peak_above(lambda: fused_kernel(logits, labels))
    _, backward = dev.peak_above(loss.backward)
    logits.grad = None
    return forward, backward


def fused_kernel_times(dev: Device, logits, labels, repeats):
    """Seconds of the forward op alone (label checks included) and of the backward op alone."""
    op, op_backward = torch.ops.simper_rs.fused_token_logps, torch.ops.simper_rs.fused_token_logps_backward
    detached = logits.detach()
    tok, lse, _, _ = op(detached, labels, -100, True, False)
    upstream = torch.ones_like(tok)
    forward = dev.seconds(lambda: op(detached, labels, -100, True, False), repeats)
    backward = dev.seconds(lambda: op_backward(upstream, detached, labels, lse, -100, True), repeats)
    return forward, backward


# The peers first, so that the rows printed while the run goes have their ratios to TRL.
LINEAR_METHODS = (
    "materialised log_softmax + gather",
    "TRL ChunkedLogProbFunction",
    "simper_rs linear_sequence_logps",
    "Liger LigerFusedLinearSimPOLoss",
    "simper_rs SimPERLoss (fused linear)",
)


def linear_method(name: str, hidden, weight, labels):
    """(the function whose output is backpropagated, the leaves it differentiates) for one method.
    simper_rs takes [B, T] labels and shifts itself; TRL and Liger score position i against target
    i, so they get the hidden states without the last position and the labels without the first."""
    b, t, h = hidden.shape
    if name == "materialised log_softmax + gather":
        return (lambda: log_softmax_gather(hidden @ weight.T, labels)), (hidden, weight)
    if name == "simper_rs linear_sequence_logps":
        return (lambda: simper_rs.linear_sequence_logps(hidden, weight, labels).mean()), (hidden, weight)
    if name == "simper_rs SimPERLoss (fused linear)":
        loss = simper_rs.SimPERLoss()
        return (lambda: loss(hidden=hidden, lm_head_weight=weight, labels=labels).loss), (hidden, weight)
    shifted = hidden.detach()[:, :-1].contiguous().requires_grad_(True)
    targets = labels[:, 1:].contiguous()
    if name == "TRL ChunkedLogProbFunction":
        token_logps = trl_token_logps()
        flat, flat_targets = shifted.view(-1, h), targets.clamp(min=0).view(-1)
        return (lambda: token_logps(flat, weight, flat_targets).view(b, t - 1).mean(-1).mean()), (shifted, weight)
    if name == "Liger LigerFusedLinearSimPOLoss":
        loss = liger_fused_simpo()(compute_nll_loss=False, compiled=True)
        return (lambda: loss(weight, shifted, targets)[0]), (shifted, weight)
    raise ValueError(f"unknown fused-linear method {name!r}")


def error_text(err: Exception) -> str:
    """A row's ``error``: the exception's type and the first line of its message."""
    first_line = (str(err).splitlines() or [""])[0]
    return f"{type(err).__name__}: {first_line[:80]}"


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def _num(x, scale: float = 1.0) -> str:
    return f"{x * scale:.2f}" if x is not None else "nan"


def _memory(n: Optional[float]) -> str:
    return gib(n) if n is not None else "n/a"


def title_lines(data: dict) -> list:
    gpu = data["gpu"]
    return [
        f"# {gpu['name']}, torch {data['machine']['torch']}, simper_rs {data['machine']['simper_rs']}",
        f"device-to-device copy: {_num(gpu['copy_bandwidth'], 1e-12)} TB/s (read + write); data-sheet peak: "
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
        f"| {row['method']} | {row['seconds'] * 1e3:.2f} ms | {row['vs_log_softmax']:.2f}x | "
        f"{_memory(row['peak_bytes'])} | {row['achieved_bytes_per_s'] / 1e12:.2f} TB/s | {_num(row['floor_fraction'])} |"
    )


def split_lines(row: dict) -> list:
    rows = row["rows"]
    forward = row["forward_bytes"]
    per_row = f" ({forward / rows:.0f} B per row)" if forward is not None else ""
    return [
        f"simper_rs memory: forward +{_memory(forward)}{per_row}, "
        f"backward +{_memory(row['backward_bytes'])} (the gradient alone is {gib(row['grad_bytes'])})",
        f"simper_rs kernels alone: forward {row['forward_seconds'] * 1e3:.2f} ms "
        f"({row['row_bytes'] / row['forward_seconds'] / 1e12:.2f} TB/s), backward {row['backward_seconds'] * 1e3:.2f} ms "
        f"({2 * row['row_bytes'] / row['backward_seconds'] / 1e12:.2f} TB/s)",
    ]


LINEAR_HEADER = [
    "| method | fwd+bwd | vs materialised | extra peak | vs TRL time | vs TRL extra peak |",
    "|---|---|---|---|---|---|",
]


def linear_title(section: dict) -> str:
    return (
        f"## fused linear, bfloat16, (N, H, V) = ({section['rows']}, {section['hidden']}, {section['vocab']}); "
        f"weight {gib(section['weight_bytes'])}, logits would be {gib(section['logits_bytes'])}"
    )


def _ratio(x: Optional[float], y: Optional[float]) -> str:
    return f"{x / y:.2f}x" if x is not None and y else ""


def linear_row(row: dict, rows: list) -> str:
    if "skipped" in row or "error" in row:
        reason = f"skipped: {row['skipped']}" if "skipped" in row else f"failed: {row['error']}"
        return f"| {row['method']} | {reason} | | | | |"
    measured = {r["method"]: r for r in rows if "seconds" in r}
    base = measured.get(LINEAR_METHODS[0])
    trl = measured.get("TRL ChunkedLogProbFunction")
    return (
        f"| {row['method']} | {row['seconds'] * 1e3:.1f} ms | {_ratio(row['seconds'], base and base['seconds'])} | "
        f"{_memory(row['extra_peak_bytes'])} | {_ratio(row['seconds'], trl and trl['seconds'])} | "
        f"{_ratio(row['extra_peak_bytes'], trl and trl['extra_peak_bytes'])} |"
    )


def render(data: dict) -> str:
    """What the run printed, from its JSON (benchmarks/report.py)."""
    lines = title_lines(data)
    for section in data["sections"]:
        lines += section_lines(section, data["gpu"]["peak_bandwidth"])
        rows = [r for r in data["rows"] if r.get("table", "logits") == "logits" and r["dtype"] == section["dtype"]]
        lines += [method_row(r) for r in rows if r["method"] != "simper_rs split"]
        lines += [line for r in rows if r["method"] == "simper_rs split" for line in split_lines(r)]
    if data.get("linear"):
        rows = [r for r in data["rows"] if r.get("table") == "linear"]
        lines += ["", linear_title(data["linear"]), *LINEAR_HEADER, *(linear_row(r, rows) for r in rows)]
    return "\n".join(lines)


def logits_tables(dev: Device, args, results: Results, peak_bw) -> None:
    methods = {
        "log_softmax + gather": log_softmax_gather,
        "selective (logsumexp)": selective_logsumexp,
        "simper_rs CUDA kernel" if dev.cuda else "simper_rs kernel": fused_kernel,
    }
    if not args.no_compile:
        methods["torch.compile(log_softmax + gather)"] = torch.compile(log_softmax_gather, dynamic=False)
    seq = args.rows // BATCH + 1  # the shift drops one position per row
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        g = torch.Generator(device=dev.device).manual_seed(0)
        logits = torch.empty(BATCH, seq, args.vocab, device=dev.device, dtype=dtype).normal_(0, 2, generator=g)
        labels = torch.randint(0, args.vocab, (BATCH, seq), device=dev.device, generator=g)
        logits.requires_grad_(True)
        rows = BATCH * (seq - 1)
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
            row = dict(table="logits", dtype=dtype_name, rows=rows, vocab=args.vocab, method=label)
            try:
                seconds, peak = measure(dev, lambda m=method, x=logits, y=labels: m(x, y), (logits,), args.repeats)
            except Exception as err:  # a baseline that cannot run (out of memory, compile error)
                row["error"] = error_text(err)
                print(method_row(results.add(row)))
                logits.grad = None
                dev.release()
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
        forward, backward = fused_memory_split(dev, logits, labels)
        fwd_s, bwd_s = fused_kernel_times(dev, logits, labels, args.repeats)
        split = dict(
            table="logits",
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
        dev.release()


def linear_table(dev: Device, args, results: Results) -> None:
    seq = args.rows // BATCH + 1
    dtype = torch.bfloat16
    g = torch.Generator(device=dev.device).manual_seed(0)
    hidden = torch.empty(BATCH, seq, args.hidden, device=dev.device, dtype=dtype).normal_(generator=g)
    weight = torch.empty(args.vocab, args.hidden, device=dev.device, dtype=dtype).normal_(generator=g)
    weight.mul_(args.hidden**-0.5)
    labels = torch.randint(0, args.vocab, (BATCH, seq), device=dev.device, generator=g)
    hidden.requires_grad_(True)
    weight.requires_grad_(True)
    rows = BATCH * (seq - 1)
    section = dict(
        rows=rows,
        hidden=args.hidden,
        vocab=args.vocab,
        weight_bytes=weight.numel() * weight.element_size(),
        logits_bytes=BATCH * seq * args.vocab * weight.element_size(),
    )
    results.data["linear"] = section
    print("\n" + linear_title(section))
    print("\n".join(LINEAR_HEADER))
    rows_done: list = []
    for name in LINEAR_METHODS:
        row = dict(table="linear", dtype="bfloat16", method=name)
        try:
            fn, leaves = linear_method(name, hidden, weight, labels)
            seconds, peak = measure(dev, fn, leaves, args.repeats)
        except Skipped as skipped:
            row["skipped"] = str(skipped)
        except Exception as err:  # a peer that cannot run here (out of memory, a Triton error)
            row["error"] = error_text(err)
        else:
            grads = sum(leaf.numel() * leaf.element_size() for leaf in leaves)
            row.update(seconds=seconds, extra_peak_bytes=None if peak is None else peak - grads)
        rows_done.append(results.add(row))
        print(linear_row(row, rows_done))
        hidden.grad = weight.grad = None
        dev.release()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16384, help="N, labelled positions (batch 8 × seq)")
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--hidden", type=int, default=4096, help="H of the fused-linear table")
    parser.add_argument("--dtypes", default="bfloat16,float32", help="of the logits tables")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    parser.add_argument("--no-linear", action="store_true", help="skip the fused-linear table")
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu for a dry run of the script")
    parser.add_argument(
        "--json", default=str(RESULTS / "gpu.json"), help="where to write the results (default: %(default)s)"
    )
    args = parser.parse_args()
    if args.rows < BATCH:
        parser.error(f"--rows must be at least {BATCH}, got {args.rows}")
    dev = Device(torch.device(args.device))
    if dev.cuda and not torch.cuda.is_available():
        parser.error("no CUDA GPU visible; --device cpu runs the script on the CPU (a dry run)")

    name = dev.name()
    peak_bw = next((bw for key, bw in PEAK_BANDWIDTH.items() if key in name), None)
    results = Results(
        "gpu",
        None,
        rows=args.rows,
        vocab=args.vocab,
        hidden=args.hidden,
        dtypes=args.dtypes,
        repeats=args.repeats,
        device=args.device,
    )
    results.data.update(
        gpu={"name": name, "copy_bandwidth": copy_bandwidth(dev), "peak_bandwidth": peak_bw}, sections=[]
    )
    print("\n".join(title_lines(results.data)))
    logits_tables(dev, args, results, peak_bw)
    if not args.no_linear:
        linear_table(dev, args, results)
    results.write(args.json)


if __name__ == "__main__":
    main()
