//! Compute kernels that replace burn operations where facemark's networks spend their time,
//! plugged in through burn's own extension point (`#[backend_extension]`, an operation with its
//! own backward pass for the autodiff backend), never by patching burn.
//!
//! Each replacement runs only where it applies (the flex CPU backend, f32, the shapes it
//! handles) and falls back to burn's operation everywhere else; tests hold its forward pass and
//! gradients equal to burn's within 1e-4 (relative). Why each exists, with before/after
//! profiles: results/speed.md.

pub mod conv;
mod extension;
pub mod norm;
pub mod upsample;

pub use extension::{batch_norm, conv_norm, conv_transpose2d, conv2d, forward_conv, forward_up};
