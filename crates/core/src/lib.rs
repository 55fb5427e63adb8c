//! The pure-Rust core of simper_rs: no torch and no Python, covered by `cargo test`.
//!
//! - [`kernels`]: the fused masked log-prob reduction on slices (forward, backward, in place),
//!   its element types, the vectorised exp and tanh, the logit transforms, packed-row segments;
//! - [`losses`]: the SimPER and DIL formulas and their gradients, written once over
//!   [`losses::LossMath`] (for plain numbers here; the extension implements it for tensors).
//!
//! The extension crate (`simper_rs`, the Python module `simper_rs._core`), the fuzz target and
//! the torch 2.11 variant depend on this crate. See docs/design.md.
pub mod kernels;
pub mod losses;
