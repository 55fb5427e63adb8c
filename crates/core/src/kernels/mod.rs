//! Pure-Rust kernels on slices: no torch, no Python. `cargo test` covers them.
//!
//! - [`element`]: the logits element types (float32, float64, bfloat16, float16) and their
//!   accumulation type;
//! - [`fastexp`]: a branch-free `exp` that the compiler vectorises;
//! - [`logps`]: the fused masked log-prob reduction (docs/design.md), forward and backward;
//! - [`segments`]: packed (padding-free) rows split into their sequences by `position_ids`;
//! - [`transform`]: the logit transforms (scale, softcap) the kernels apply as they read a row.
pub mod element;
pub mod fastexp;
pub mod logps;
pub mod segments;
pub mod transform;
