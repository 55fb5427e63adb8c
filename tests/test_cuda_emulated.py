"""The CUDA kernel's logic on the CPU: src/cuda/logps.cu compiled as C++ with each thread block
run as real threads meeting at real barriers (tests/cuda_emulation/emulate.cpp), against the
plain-PyTorch reference. What it cannot check (the PTX primitives' hardware behaviour, the
launch on a stream) is tests/test_cuda.py's job on a GPU.

Blocks of 32 threads (short rows already reach the unrolled vector loop) and of 256 (what the GPU
launches). Skipped, saying why, where no C++20 compiler is found.
"""

import ctypes
import math
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import reference as ref

HERE = Path(__file__).parent
SOURCE = HERE / "cuda_emulation" / "emulate.cpp"
KIND = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
COMPILER = shutil.which("g++") or shutil.which("c++")
pytestmark = pytest.mark.skipif(
    COMPILER is None, reason="no C++ compiler (g++) to build the CPU emulation of the CUDA kernel"
)


class Rows(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_longlong)
        for name in ("used", "vocab", "batch_stride", "position_stride", "labels_stride", "shift")
    ]


class Transform(ctypes.Structure):
    """`struct Transform` of logps.cu (src/cuda/launch.rs builds the same from a LogitTransform)."""

    _fields_ = [("kind", ctypes.c_int), ("a", ctypes.c_float), ("c", ctypes.c_float), ("inv_c", ctypes.c_float)]


IDENTITY = Transform(0, 1.0, 1.0, 1.0)


def transform_of(logit_scale=None, logit_softcap=None):
    """The kernel's Transform for a scale and a softcap, as launch.rs converts them."""
    scale = 1.0 if logit_scale is None else logit_scale
    if logit_softcap is None:
        return IDENTITY if scale == 1.0 else Transform(1, scale, 1.0, 1.0)
    return Transform(2, scale / logit_softcap, logit_softcap, 1.0 / logit_softcap)


_built = {}


def build_emulator(block):
    """Compile the emulation with `block` threads per block (once per session) and load it."""
    if block not in _built:
        out = Path(tempfile.mkdtemp(prefix="simper_rs_emulation")) / f"emulate{block}.so"
        command = [
            COMPILER,
            "-std=c++20",
            "-O1",
            "-shared",
            "-fPIC",
            "-pthread",
            "-fvisibility=hidden",
            f"-DBLOCK={block}",
            str(SOURCE),
            "-o",
            str(out),
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0 and "c++20" in done.stderr:
            pytest.skip(f"{COMPILER} cannot compile C++20: {done.stderr.strip().splitlines()[-1]}")
        assert done.returncode == 0, done.stderr
        lib = ctypes.CDLL(str(out))
        p, i64 = ctypes.c_void_p, ctypes.c_longlong
        lib.emulated_forward.argtypes = [ctypes.c_int, p, p, Rows, Transform, i64, ctypes.c_int, p, p, p, p, i64]
        lib.emulated_backward.argtypes = [ctypes.c_int, p, p, Rows, Transform, i64, p, p, p, i64, i64]
        assert lib.emulated_block_threads() == block
        _built[block] = lib
    return _built[block]


@pytest.fixture(params=[32, 256], ids=lambda b: f"block{b}")
def emulator(request):
    return build_emulator(request.param)


def rows_of(logits, labels, shift):
    b, t, v = logits.shape
    return Rows(t - int(shift), v, logits.stride(0), logits.stride(1), labels.shape[1], int(shift))


def forward(lib, logits, labels, shift=True, with_stats=True, ignore_index=-100, transform=IDENTITY):
    """What src/bindings/fused_cuda.rs sets up for the forward kernel, on CPU tensors."""
    assert logits.stride(2) == 1
    labels = labels.contiguous()
    b, t, _ = logits.shape
    used = t - int(shift)
    out = [torch.full((b, used), 123.0) for _ in range(4)]  # poison: every entry must be written
    lib.emulated_forward(
        KIND[logits.dtype],
        logits.data_ptr(),
        labels.data_ptr(),
        rows_of(logits, labels, shift),
        transform,
        ignore_index,
        int(with_stats),
        *(o.data_ptr() for o in out),
        b * used,
    )
    return out


def backward(lib, grad_logps, logits, labels, lse, shift=True, ignore_index=-100, out=None, transform=IDENTITY):
    labels = labels.contiguous()
    b, t, v = logits.shape
    grad = torch.full((b, t, v), 7.0, dtype=logits.dtype) if out is None else out
    lib.emulated_backward(
        KIND[logits.dtype],
        logits.data_ptr(),
        labels.data_ptr(),
        rows_of(logits, labels, shift),
        transform,
        ignore_index,
        grad_logps.float().contiguous().data_ptr(),
        lse.float().contiguous().data_ptr(),
        grad.data_ptr(),
        t,
        b * t,
    )
    return grad


def reference_all(logits, labels, shift=True, ignore_index=-100):
    """Token log-probs, logsumexp, entropy, argmax == label and the gradient of Σ tok·upstream."""
    x = (logits[:, :-1] if shift else logits).float()
    y = labels[:, 1:] if shift else labels
    keep = y != ignore_index
    lse = torch.where(keep, torch.logsumexp(x, -1), 0.0)
    p = torch.softmax(x, -1)
    entropy = torch.where(keep, -(p * torch.log_softmax(x, -1)).nan_to_num(0.0).sum(-1), 0.0)
    correct = (keep & (x.argmax(-1) == y)).float()
    return ref.token_logps(logits.float(), labels, ignore_index, shift), lse, entropy, correct


def reference_grad(logits, labels, upstream, shift=True, ignore_index=-100):
    leaf = logits.detach().float().requires_grad_(True)
    (ref.token_logps(leaf, labels, ignore_index, shift) * upstream).sum().backward()
    return leaf.grad


def batch(b, t, v, dtype, seed=0, scale=3.0, ignore_frac=0.25):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(b, t, v, generator=g) * scale).to(dtype)
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[torch.rand(b, t, generator=g) < ignore_frac] = -100
    return logits, labels


GRAD_TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-5),
    torch.float16: dict(rtol=2e-3, atol=1e-6),
}


def check(lib, logits, labels, shift=True, ignore_index=-100):
    logps, lse, entropy, correct = forward(lib, logits, labels, shift, ignore_index=ignore_index)
    want = reference_all(logits, labels, shift, ignore_index)
    for got, expected in zip((logps, lse, entropy), want[:3]):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=2e-5)
    assert torch.equal(correct, want[3])
    upstream = torch.randn(logps.shape, generator=torch.Generator().manual_seed(1))
    grad = backward(lib, upstream, logits, labels, lse, shift, ignore_index)
    expected = reference_grad(logits, labels, upstream, shift, ignore_index)
    torch.testing.assert_close(grad.float(), expected.to(logits.dtype).float(), **GRAD_TOL[logits.dtype])


@pytest.mark.parametrize("dtype", list(KIND))
@pytest.mark.parametrize("vocab", [1, 7, 33, 1000, 4099])
@pytest.mark.parametrize("shift", [True, False])
def test_matches_the_reference(emulator, dtype, vocab, shift):
    logits, labels = batch(2, 5, vocab, dtype, seed=vocab)
    check(emulator, logits, labels, shift)


@pytest.mark.parametrize("dtype", list(KIND))
def test_strided_and_unaligned_rows(emulator, dtype):
    base, labels = batch(3, 6, 1029, dtype)
    # Row stride V + 1: every row starts at a different 16-byte phase.
    padded = torch.zeros(3, 6, 1030, dtype=dtype)
    padded[..., 1:] = base
    check(emulator, padded[..., 1:], labels)
    # Time-major storage seen as [B, T, V]: batch stride V, position stride B·V.
    check(emulator, base.transpose(0, 1).contiguous().transpose(0, 1), labels)


def test_every_output_written_and_ignored_rows_zero(emulator):
    logits, labels = batch(3, 6, 300, torch.float32)
    labels[1] = -100
    logps, lse, entropy, correct = forward(emulator, logits, labels)
    assert (logps[1] == 0).all() and (lse[1] == 0).all() and (entropy[1] == 0).all() and (correct[1] == 0).all()
    assert not (logps == 123.0).any()
    grad = backward(emulator, torch.ones_like(logps), logits, labels, lse)
    assert (grad[1] == 0).all() and (grad[:, -1] == 0).all()  # ignored row, and the shifted-out position


def test_custom_ignore_index_and_out_of_range_labels(emulator):
    logits, labels = batch(2, 6, 50, torch.float32, ignore_frac=0.0)
    labels[0, 2] = 7
    check(emulator, logits, labels, ignore_index=7)
    labels[1, 3] = 50  # out of range: refused before launch in eager mode; the kernel writes NaN
    logps, lse, _, correct = forward(emulator, logits, labels, ignore_index=7)
    assert math.isnan(logps[1, 2]) and math.isnan(lse[1, 2]) and correct[1, 2] == 0
    grad = backward(emulator, torch.ones_like(logps), logits, labels, lse, ignore_index=7)
    assert torch.isnan(grad[1, 2]).all() and torch.isfinite(grad[0]).all()


def test_extreme_values_nan_and_minus_inf(emulator):
    logits, labels = batch(2, 4, 700, torch.float32, ignore_frac=0.0)
    check(emulator, logits * 3e3, labels)  # ±1e4: the online max keeps exp in range
    masked = logits.clone()
    masked[..., 64:] = float("-inf")  # a masked-out vocabulary tail
    masked[..., :3] = float("-inf")  # and head
    check(emulator, masked, labels.clamp(3, 63))
    nan = logits.clone()
    nan[0, 1, 500] = float("nan")
    logps, lse, entropy, _ = forward(emulator, nan, labels)
    assert math.isnan(logps[0, 1]) and math.isnan(lse[0, 1]) and math.isnan(entropy[0, 1])
    assert torch.isfinite(logps[1]).all() and torch.isfinite(logps[0, 0])


def test_in_place_backward_equals_out_of_place(emulator):
    # The fused-linear op overwrites each chunk's logits with their gradient.
    for dtype in KIND:
        logits, labels = batch(1, 9, 1027, dtype)
        logps, lse, _, _ = forward(emulator, logits, labels, shift=False)
        upstream = torch.randn(logps.shape)
        fresh = backward(emulator, upstream, logits, labels, lse, shift=False)
        buffer = logits.clone()
        backward(emulator, upstream, buffer, labels, lse, shift=False, out=buffer)
        assert torch.equal(buffer, fresh)


def test_first_maximum_wins_ties_like_argmax(emulator):
    logits = torch.zeros(1, 3, 600)
    logits[0, :, [17, 301, 599]] = 5.0  # three equal maxima, in different threads' slices
    labels = torch.tensor([[17, 301, 17]])
    _, _, _, correct = forward(emulator, logits, labels, shift=False)
    assert correct.tolist() == [[1.0, 0.0, 1.0]]


def test_bit_identical_runs(emulator):
    logits, labels = batch(2, 7, 3001, torch.bfloat16)
    first = forward(emulator, logits, labels)
    for _ in range(2):
        assert all(torch.equal(a, b) for a, b in zip(first, forward(emulator, logits, labels)))


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(1, 3),
    t=st.integers(2, 6),
    v=st.integers(1, 2100),
    dtype=st.sampled_from(list(KIND)),
    offset=st.integers(0, 7),
    shift=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_any_shape_offset_and_mask(b, t, v, dtype, offset, shift, seed):
    lib = build_emulator(32)
    logits, labels = batch(b, t, v, dtype, seed=seed)
    storage = torch.zeros(b * t * v + offset, dtype=dtype)
    storage[offset:] = logits.reshape(-1)
    check(lib, storage[offset:].view(b, t, v), labels, shift)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "transform",
    [dict(logit_scale=0.0625), dict(logit_softcap=2.5), dict(logit_scale=3.0, logit_softcap=4.0)],
    ids=["scale", "softcap", "scale-softcap"],
)
@pytest.mark.parametrize("vocab", [5, 301])
def test_logit_transforms_match_the_reference(emulator, dtype, transform, vocab):
    """The transform applied as each element is read (head, vector body, tail), its derivative in
    the backward, and the argmax and entropy of the transformed row."""
    logits, labels = batch(3, 6, vocab, dtype, seed=vocab, scale=6.0)
    z = logits.float()
    if transform.get("logit_scale") is not None:
        z = z * transform["logit_scale"]
    if transform.get("logit_softcap") is not None:
        z = transform["logit_softcap"] * torch.tanh(z / transform["logit_softcap"])
    logps, lse, entropy, correct = forward(emulator, logits, labels, transform=transform_of(**transform))
    want = reference_all(z, labels)
    tol = dict(rtol=1e-5, atol=1e-5)
    for got, expected in zip((logps, lse, entropy, correct), want):
        torch.testing.assert_close(got, expected, **tol)
    upstream = torch.randn(logps.shape, generator=torch.Generator().manual_seed(1))
    grad = backward(emulator, upstream, logits, labels, lse, transform=transform_of(**transform))
    leaf = logits.detach().float().requires_grad_(True)
    y = leaf * transform.get("logit_scale", 1.0) if transform.get("logit_scale") is not None else leaf
    if transform.get("logit_softcap") is not None:
        y = transform["logit_softcap"] * torch.tanh(y / transform["logit_softcap"])
    (ref.token_logps(y, labels) * upstream).sum().backward()
    grad_tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(grad.float(), leaf.grad, **grad_tol)


# -- the self-check's problem (simper_rs.cuda_check) through the emulated kernel


class EmulatedKernel:
    """simper_rs.cuda_check's kernel functions on the emulation: the check's exact problem runs
    through the kernel source on CPU threads, set up as src/bindings/fused_cuda.rs sets it up."""

    def __init__(self, lib):
        self.lib = lib

    def load(self, device):
        assert torch.device(device).type == "cpu"

    def forward(self, logits, labels, ignore_index, shift, with_stats, **options):
        return forward(self.lib, logits, labels, shift, with_stats, ignore_index, transform=transform_of(**options))

    def backward(self, grad_logps, logits, labels, lse, ignore_index, shift, **options):
        return backward(
            self.lib, grad_logps, logits, labels, lse, shift, ignore_index, transform=transform_of(**options)
        )

    def backward_in_place(self, rows, targets, grad_logps, lse, ignore_index, **options):
        assert rows.is_contiguous()  # as fused_cuda::backward_in_place requires
        view = rows.unsqueeze(0)
        backward(
            self.lib,
            grad_logps[None],
            view,
            targets[None],
            lse[None],
            False,
            ignore_index,
            out=view,
            transform=transform_of(**options),
        )


@pytest.mark.parametrize("dtype", list(KIND))
def test_the_self_check_passes_on_the_emulated_kernel(emulator, dtype):
    from simper_rs import cuda_check

    result = cuda_check.run_self_check(EmulatedKernel(emulator), "cpu", dtype)
    assert result.passed, result.failure


def test_the_self_check_catches_a_fault_in_the_emulated_kernel():
    from simper_rs import cuda_check

    class SkipsTheTail(EmulatedKernel):
        # What a kernel that drops the scalar tail after the vector loop would give: the last
        # element of every row missing from the gradient.
        def backward(self, grad_logps, logits, labels, lse, ignore_index, shift, **options):
            grad = super().backward(grad_logps, logits, labels, lse, ignore_index, shift, **options)
            grad[..., -1] = 0
            return grad

    result = cuda_check.run_self_check(SkipsTheTail(build_emulator(32)), "cpu", torch.bfloat16)
    assert not result.passed and "backward: gradient: " in result.failure


def _rows_read(case, logits):
    """(byte address of the input row, byte offset of its gradient row in the backward's output)
    of every logits row the forward kernel reads."""
    if case.layout == "rows":
        logits = logits.unsqueeze(0)
    b, t, v = logits.shape
    size = logits.element_size()
    for i in range(b):
        for j in range(t - int(case.shift)):
            start = logits.data_ptr() + (i * logits.stride(0) + j * logits.stride(1)) * size
            # The in-place backward writes over the rows; the other a fresh contiguous [B, T, V] (16-byte aligned).
            yield start, (start if case.layout == "rows" else (i * t + j) * v * size)


@pytest.mark.parametrize("dtype", list(KIND))
def test_the_self_check_problem_reaches_every_loop_of_the_kernel(dtype):
    # The loops of forward_row / backward_row in logps.cu at the GPU's 256 threads per block:
    # the scalar head (a row not on a 16-byte boundary), the UNROLL-deep vector loop, the
    # one-vector loop after it, the scalar tail, and in backward both the vector path (input and
    # output rows at the same 16-byte phase) and the scalar one (different phases).
    from simper_rs import cuda_check

    block, unroll = 256, 4
    size = torch.tensor([], dtype=dtype).element_size()
    per_vec = 16 // size
    heads, bodies, tails, remainders, same_phase = set(), set(), set(), set(), set()
    for case in cuda_check.CASES:
        logits, _ = cuda_check._problem(case, dtype, torch.device("cpu"))
        v = case.vocab
        for start, out in _rows_read(case, logits):
            head = min(((16 - start % 16) % 16) // size, v)
            nvec = (v - head) // per_vec
            heads.add(head > 0)
            bodies.add(nvec > (unroll - 1) * block)  # thread 0 runs the unrolled loop at least once
            remainders.add(nvec % (unroll * block) > 0)
            tails.add((v - head) % per_vec > 0)
            same_phase.add(start % 16 == out % 16)
    assert True in heads and bodies == {True} and True in remainders and True in tails
    assert same_phase == {True, False}
    assert cuda_check.VOCAB % 8 != 0 and cuda_check.VOCAB % 4 != 0
