//! What Python calls: functions on `torch.Tensor` and numpy arguments. Each validates its
//! arguments (a clear error naming the argument), releases the GIL and dispatches to the pure-Rust
//! kernels (`crate::kernels`), the CUDA kernel (`crate::cuda`) or libtorch.
//!
//! - `torch.rs`: tensor validation and the libtorch path (the in-package reference and fallback);
//! - `fused_cpu.rs` / `fused_cuda.rs`: the fused log-prob kernel on CPU / CUDA tensors (the CUDA
//!   side also exposes NVRTC compilation and the kernel's status);
//! - `fused_ops.rs`: the fused op's Python entry points, dispatching on the device;
//! - `fused_linear.rs`: log-probs from hidden states and the lm_head weight, chunk by chunk;
//! - `fused_linear_loss.rs`: the pair losses from hidden states, gradients taken in the forward;
//! - `numpy.rs`: the same kernels and formulas on numpy arrays.
pub mod fused_cpu;
pub mod fused_cuda;
pub mod fused_linear;
pub mod fused_linear_loss;
pub mod fused_ops;
pub mod numpy;
pub mod torch;
