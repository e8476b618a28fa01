//! The one place that chooses a compute device.

use burn::tensor::Device;

/// The inference device of the compiled-in backend: wgpu or CUDA when built with those features,
/// otherwise the pure-Rust flex CPU backend.
pub fn device() -> Device {
    #[cfg(feature = "cuda")]
    return Device::cuda(0);
    #[cfg(all(feature = "wgpu", not(feature = "cuda")))]
    return Device::wgpu(Default::default());
    #[cfg(not(any(feature = "wgpu", feature = "cuda")))]
    Device::flex()
}

/// The training device: [`device`] with automatic differentiation.
pub fn training_device() -> Device {
    device().autodiff()
}

/// A short name of the compiled-in backend, for reports.
pub fn name() -> &'static str {
    if cfg!(feature = "cuda") {
        "cuda"
    } else if cfg!(feature = "wgpu") {
        "wgpu"
    } else {
        "flex"
    }
}
