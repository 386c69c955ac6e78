//! Choosing where tensors live. The core never names a backend elsewhere: burn 0.22 keeps the
//! backend in the `Device`.

use burn::backend::DispatchDevice;
use burn::tensor::Device;

/// burn's `flex` CPU backend: measured faster than `ndarray` on this project's CPU workloads
/// (README, "Speed"; `webtune bench`).
pub fn cpu() -> Device {
    Device::flex()
}

/// The default GPU through wgpu (Vulkan / Metal / DX12 natively).
#[cfg(all(feature = "gpu", not(target_arch = "wasm32")))]
pub fn gpu() -> crate::Result<Device> {
    Device::wgpu_options()
        .init()
        .map_err(|e| crate::Error::Device(format!("no usable GPU: {e:?}")))
}

/// Whether `device` is burn's CPU backend (with or without autodiff).
pub fn is_cpu(device: &Device) -> bool {
    matches!(
        device.clone().inner().as_dispatch(),
        DispatchDevice::Flex(_)
    )
}
