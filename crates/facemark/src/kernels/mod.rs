//! Compute kernels that replace burn operations where facemark's networks spend their time,
//! plugged in through burn's own extension point (`#[backend_extension]`, an operation with its
//! own backward pass for the autodiff backend), never by patching burn.
//!
//! Each replacement runs only where it applies (the flex CPU backend, f32, the shapes it
//! handles) and falls back to burn's operation everywhere else; tests hold its forward pass and
//! gradients equal to burn's within 1e-4 (relative). Why each exists, with before/after
//! profiles: results/speed.md.

#[cfg(target_arch = "x86_64")]
mod amx;
pub mod conv;
mod extension;
pub mod norm;
pub mod pool;
pub mod upsample;
mod weight_cache;

use std::sync::atomic::{AtomicU8, Ordering};

/// How the convolutions' matrix products treat their operands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Exact f32 products (`gemm`).
    F32,
    /// Operands rounded to bf16, products summed in f32, on AMX tiles where the CPU has them
    /// (f32 elsewhere): mixed precision, as accelerators train. The default: on the shipped
    /// models it moves the NME by 0.003 points at most and makes a face 4x faster
    /// (results/speed.md).
    #[default]
    Bf16,
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            other => Err(format!("unknown precision {other:?} (f32 or bf16)")),
        }
    }
}

/// 0: not yet chosen; then 1 + the `Precision` in force.
static PRECISION: AtomicU8 = AtomicU8::new(0);

/// Sets the precision of every later convolution in this process.
pub fn set_precision(precision: Precision) {
    PRECISION.store(1 + precision as u8, Ordering::Relaxed);
}

/// The precision in force: set by [`set_precision`], else `FACEMARK_PRECISION` (`f32`, `bf16`),
/// else bf16 (which is f32 on CPUs without AMX tiles).
pub fn precision() -> Precision {
    match PRECISION.load(Ordering::Relaxed) {
        1 => Precision::F32,
        2 => Precision::Bf16,
        _ => {
            let chosen = std::env::var("FACEMARK_PRECISION")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or_default();
            set_precision(chosen);
            chosen
        }
    }
}

/// For the tests that hold the kernels to burn's f32 operations within 1e-4: f32 products in
/// this test process (none of its tests asks for bf16; `tests/precision.rs` covers bf16).
#[cfg(test)]
pub(crate) fn f32_products() {
    set_precision(Precision::F32);
}

/// Whether this CPU has AMX tiles for bf16 products (and the OS lets facemark use them).
pub fn tiles_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        amx::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether matrix products run on AMX tiles now.
fn uses_tiles() -> bool {
    precision() == Precision::Bf16 && tiles_available()
}

/// Values below which a memory-bound pass stays on the calling thread: waking rayon's threads
/// costs more than they save (a single face's small layers).
const PARALLEL_MIN_VALUES: usize = 1 << 16;

/// Runs `work` on each `chunk`-long piece of `data` with its index, on rayon's threads when
/// `parallel` and `data` holds at least [`PARALLEL_MIN_VALUES`], else on this thread.
pub(crate) fn for_each_chunk<T: Send>(
    data: &mut [T],
    chunk: usize,
    parallel: bool,
    work: impl Fn((usize, &mut [T])) + Sync + Send,
) {
    use rayon::prelude::*;
    if parallel && data.len() >= PARALLEL_MIN_VALUES {
        data.par_chunks_mut(chunk).enumerate().for_each(work);
    } else {
        data.chunks_mut(chunk).enumerate().for_each(work);
    }
}

pub use extension::{
    batch_norm, conv_norm, conv_transpose2d, conv2d, fold_norm, forward_conv,
    forward_conv_plus_map, forward_up, max_pool, up_then_skip,
};
