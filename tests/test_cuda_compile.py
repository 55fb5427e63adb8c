"""CPU CI guards the CUDA kernel: its source must compile under NVRTC (no GPU needed)."""
import pytest

from simper_rs import _core
from simper_rs._cuda import load_nvrtc

NVRTC = load_nvrtc()


@pytest.mark.skipif(NVRTC is None, reason="NVRTC cannot be loaded here (it comes with the CUDA build of torch)")
@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
def test_kernel_compiles_under_nvrtc(arch):
    ptx = _core.cuda_compile_kernel(arch)
    for kernel in ("f32", "bf16", "f16"):
        assert f".entry logps_forward_{kernel}" in ptx
        assert f".entry logps_backward_{kernel}" in ptx
    assert ".target sm_" + arch.split("_")[1] in ptx


def test_unknown_arch_is_rejected():
    with pytest.raises(ValueError, match="arch must be one of"):
        _core.cuda_compile_kernel("sm_1")
