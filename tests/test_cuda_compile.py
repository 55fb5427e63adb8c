"""CPU CI guards the CUDA kernel: its source must compile under NVRTC, down to machine code for
the GPUs it targets (NVRTC runs ptxas for an sm_XY target), with no GPU present."""
import pytest

from simper_rs import _core
from simper_rs._cuda import load_nvrtc

NVRTC = load_nvrtc()
needs_nvrtc = pytest.mark.skipif(NVRTC is None, reason="NVRTC cannot be loaded here (it comes with the CUDA build of torch)")
KERNELS = [f"logps_{way}_{dtype}" for dtype in ("f32", "bf16", "f16") for way in ("forward", "backward")]


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
