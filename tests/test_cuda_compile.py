"""CPU CI guards the CUDA kernel: its source must compile under NVRTC, down to machine code for
the GPUs it targets (NVRTC runs ptxas for an sm_XY target), with no GPU present."""

import warnings

import pytest

from simper_rs import _core
from simper_rs._cuda import load_nvrtc

NVRTC = load_nvrtc()
needs_nvrtc = pytest.mark.skipif(
    NVRTC is None, reason="NVRTC cannot be loaded here (it comes with the CUDA build of torch)"
)
KERNELS = [
    f"logps_{way}_{dtype}{transform}"
    for dtype in ("f32", "bf16", "f16")
    for transform in ("", "_scaled", "_softcapped")
    for way in ("forward", "backward")
]


@needs_nvrtc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_kernel_compiles_to_machine_code(arch):
    cubin = _core.cuda_compile_kernel(arch)
    assert cubin[:4] == b"\x7fELF"
    for name in KERNELS:
        assert name.encode() in cubin


@needs_nvrtc
def test_kernel_compiles_to_ptx_for_newer_gpus():
    ptx = _core.cuda_compile_kernel("compute_90").decode()
    for name in KERNELS:
        assert f".entry {name}" in ptx
    assert ".target sm_90" in ptx


@needs_nvrtc
def test_nvrtc_reports_the_architectures_it_compiles_for():
    archs = _core.cuda_supported_archs()
    assert 90 in archs and all(isinstance(a, int) for a in archs)


@pytest.mark.parametrize("arch", ["sm_1", "compute_x", "90", ""])
def test_unknown_arch_is_rejected(arch):
    with pytest.raises(ValueError, match="arch must look like 'sm_90'"):
        _core.cuda_compile_kernel(arch)


def test_kernel_status_explains_why_it_cannot_run_without_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: tests/test_cuda.py covers the kernel there")
    reason = _core.cuda_kernel_status(0)
    assert isinstance(reason, str) and reason  # e.g. the driver cannot be loaded, or no device


def _decide(monkeypatch, status):
    """kernel_unavailable_reason for a fresh device cache, with the Rust status call recorded."""
    import torch

    from simper_rs import _cuda

    calls = []
    monkeypatch.setattr(_core, "cuda_kernel_status", lambda index: calls.append(index) or status)
    monkeypatch.setattr(_cuda, "load_nvrtc", lambda: "libnvrtc.so.13")
    monkeypatch.setattr(_cuda, "_status", {})
    device = torch.device("cuda", 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reasons = [_cuda.kernel_unavailable_reason(device) for _ in range(3)]
    return reasons, calls, [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


def test_fallback_is_decided_once_per_device_and_warned_once(monkeypatch):
    reasons, calls, warned = _decide(monkeypatch, "the CUDA driver library (libcuda.so.1) cannot be loaded")
    assert reasons == ["the CUDA driver library (libcuda.so.1) cannot be loaded"] * 3
    assert calls == [3]  # compiled/loaded (or refused) once, then cached
    assert len(warned) == 1 and "cannot run on cuda:3" in warned[0] and "libtorch ops instead" in warned[0]


def test_a_ready_kernel_does_not_warn(monkeypatch):
    reasons, calls, warned = _decide(monkeypatch, None)
    assert reasons == [None] * 3 and calls == [3] and warned == []


def test_the_kernel_can_be_disabled(monkeypatch):
    from simper_rs import _cuda

    monkeypatch.setenv(_cuda.DISABLE_ENV, "1")
    reasons, calls, warned = _decide(monkeypatch, None)
    assert reasons == ["disabled by SIMPER_RS_DISABLE_CUDA_KERNEL"] * 3 and calls == [] and len(warned) == 1


@needs_nvrtc
@pytest.mark.parametrize("sm", [80, 90])
def test_no_local_memory_and_bounded_registers(sm):
    # ptxas's report per kernel: a register array indexed at run time would show up as stack
    # frame / spills (local memory, far slower); over 64 registers would cut occupancy below 50%.
    import re

    report = _core.cuda_kernel_resource_usage(sm)
    for name in KERNELS:
        section = report.split(f"Compiling entry function '{name}' for 'sm_{sm}'")[1].split("Compile time")[0]
        assert "0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads" in section, section
        registers = int(re.search(r"Used (\d+) registers", section).group(1))
        assert registers <= 64, section
