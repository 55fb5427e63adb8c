"""Forward+backward time and peak memory of the masked log-prob reduction on one CUDA GPU: the
fused CUDA kernel against log_softmax + gather, the logsumexp-based selective log-softmax, and
torch.compile of log_softmax + gather, side by side in one process.

    python benchmarks/gpu.py                       # (N, V) = (16384, 128256), bfloat16 and float32
    python benchmarks/gpu.py --rows 2048 --json out.json

The floor: a fused op must read the logits once forward, and read them once and write their
gradient once backward, so fwd+bwd moves at least 3·N·V·bytes. "of floor" is the floor's time at
the GPU's peak memory bandwidth divided by the measured time (1.0 would be perfect); the
device-to-device copy bandwidth measured here is printed as a practical ceiling.
"""
from __future__ import annotations

import argparse
import json
import statistics

import torch

import simper_rs

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
    lse = torch.stack([torch.logsumexp(row.float() if row.dtype == torch.float32 else row, dim=-1) for row in shifted]).float()
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16384, help="N, labelled positions (batch 8 × seq)")
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    peak_bw = next((bw for key, bw in PEAK_BANDWIDTH.items() if key in name), None)
    copy_bw = copy_bandwidth(device)
    print(f"# {name}, torch {torch.__version__}, simper_rs {simper_rs.__version__}")
    print(f"device-to-device copy: {copy_bw / 1e12:.2f} TB/s (read + write); data-sheet peak: "
          f"{peak_bw / 1e12 if peak_bw else float('nan'):.2f} TB/s")
    methods = {
        "log_softmax + gather": log_softmax_gather,
        "selective (logsumexp)": selective_logsumexp,
        "simper_rs CUDA kernel": fused_kernel,
    }
    if not args.no_compile:
        methods["torch.compile(log_softmax + gather)"] = torch.compile(log_softmax_gather, dynamic=False)
    batch = 8
    seq = args.rows // batch + 1  # the shift drops one position per row
    results = []
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        g = torch.Generator(device=device).manual_seed(0)
        logits = torch.empty(batch, seq, args.vocab, device=device, dtype=dtype).normal_(0, 2, generator=g)
        labels = torch.randint(0, args.vocab, (batch, seq), device=device, generator=g)
        logits.requires_grad_(True)
        rows = batch * (seq - 1)
        floor_bytes = 3 * rows * args.vocab * logits.element_size()
        print(f"\n## {dtype_name}, (N, V) = ({rows}, {args.vocab}); logits {gib(logits.numel() * logits.element_size())}, "
              f"floor {floor_bytes / 1e9:.1f} GB = {floor_bytes / peak_bw * 1e3 if peak_bw else float('nan'):.2f} ms at peak")
        print("| method | fwd+bwd | vs log_softmax | peak memory (+grad) | achieved | of floor |")
        print("|---|---|---|---|---|---|")
        rows_out = {}
        for label, method in methods.items():
            try:
                seconds, peak = measure(method, logits, labels, args.repeats)
            except Exception as err:  # a baseline that cannot run (out of memory, compile error)
                print(f"| {label} | failed: {type(err).__name__}: {str(err).splitlines()[0][:80]} | | | | |")
                torch.cuda.empty_cache()
                continue
            rows_out[label] = (seconds, peak)
            base = rows_out.get("log_softmax + gather", (seconds, 0))[0]
            achieved = floor_bytes / seconds
            fraction = (floor_bytes / peak_bw) / seconds if peak_bw else float("nan")
            print(f"| {label} | {seconds * 1e3:.2f} ms | {base / seconds:.2f}x | {gib(peak)} | {achieved / 1e12:.2f} TB/s | {fraction:.2f} |")
            results.append(dict(dtype=dtype_name, rows=rows, vocab=args.vocab, method=label, seconds=seconds, peak_bytes=peak,
                                floor_fraction=fraction, achieved_bytes_per_s=achieved))
        forward, backward = fused_memory_split(logits, labels)
        grad_bytes = logits.numel() * logits.element_size()
        print(f"simper_rs memory: forward +{gib(forward)} ({forward / rows:.0f} B per row), "
              f"backward +{gib(backward)} (the gradient alone is {gib(grad_bytes)})")
        fwd_s, bwd_s = fused_kernel_times(logits, labels, args.repeats)
        row_bytes = rows * args.vocab * logits.element_size()
        print(f"simper_rs kernels alone: forward {fwd_s * 1e3:.2f} ms ({row_bytes / fwd_s / 1e12:.2f} TB/s), "
              f"backward {bwd_s * 1e3:.2f} ms ({2 * row_bytes / bwd_s / 1e12:.2f} TB/s)")
        results.append(dict(dtype=dtype_name, method="simper_rs split", forward_bytes=forward, backward_bytes=backward,
                            grad_bytes=grad_bytes, forward_seconds=fwd_s, backward_seconds=bwd_s))
        del logits, labels
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=name, torch=torch.__version__, copy_bandwidth=copy_bw, peak_bandwidth=peak_bw, results=results), f, indent=1)


if __name__ == "__main__":
    main()
