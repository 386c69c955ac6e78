//! Choosing where tensors live. The core never names a backend elsewhere: burn 0.22 keeps the
//! backend in the `Device`.

use burn::backend::DispatchDevice;
use burn::tensor::{DType, Device};

/// burn's `flex` CPU backend: measured faster than `ndarray` on this project's CPU workloads
/// (README, "Speed"; `webtune bench`).
pub fn cpu() -> Device {
    Device::flex()
}

/// The default GPU through wgpu (Vulkan / Metal / DX12 natively). Started once per process
/// (burn registers a device's runtime once: a second `init` fails), then the same device.
#[cfg(all(feature = "gpu", not(target_arch = "wasm32")))]
pub fn gpu() -> crate::Result<Device> {
    gpu_started()
        .clone()
        .map(|(device, _)| device)
        .map_err(crate::Error::Device)
}

/// Which adapter [`gpu`] runs on ("NVIDIA H200 (Vulkan, DiscreteGpu, driver ...)"), once started:
/// a benchmark's figures mean little without it (wgpu may also pick a CPU rasterizer such as
/// lavapipe where the GPU's driver is missing).
#[cfg(all(feature = "gpu", not(target_arch = "wasm32")))]
pub fn gpu_adapter() -> Option<String> {
    gpu_started().as_ref().ok().map(|(_, name)| name.clone())
}

#[cfg(all(feature = "gpu", not(target_arch = "wasm32")))]
fn gpu_started() -> &'static Result<(Device, String), String> {
    static GPU: std::sync::OnceLock<Result<(Device, String), String>> = std::sync::OnceLock::new();
    GPU.get_or_init(|| {
        let (device, setup) = Device::wgpu_options()
            .init_with_setup()
            .map_err(|e| format!("no usable GPU: {e:?}"))?;
        let info = setup.adapter.get_info();
        let name = format!(
            "{} ({:?}, {:?}, driver {} {})",
            info.name, info.backend, info.device_type, info.driver, info.driver_info
        );
        Ok((device, name))
    })
}

/// Whether `device` is burn's CPU backend (with or without autodiff).
pub fn is_cpu(device: &Device) -> bool {
    matches!(
        device.clone().inner().as_dispatch(),
        DispatchDevice::Flex(_)
    )
}

/// Whether `device` can keep the frozen base in f16 (`base_f16`): the CPU backend always (its
/// products widen the weight for themselves); a GPU when its shaders take f16 (WebGPU's
/// `shader-f16`, Vulkan's `shaderFloat16` with 16-bit storage), where the frozen products then
/// run in f16 ([`crate::kernels::frozen_matmul`]). Elsewhere the base stays f32.
pub fn holds_f16(device: &Device) -> bool {
    is_cpu(device) || device.supports_dtype(DType::F16)
}
