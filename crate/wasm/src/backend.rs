//! Choosing the compute backend in the browser: WebGPU on a hardware adapter, the CPU backend
//! (burn's flex, compiled to wasm) when there is none or when the adapter is a software fallback
//! (SwiftShader: slower than the CPU backend, see the README's measurements).
//!
//! Two builds of the module exist (web/build.sh): with WebGPU (feature `gpu`; the CPU backend
//! runs on one thread there), and the multi-threaded CPU build (feature `threads`), which has no
//! WebGPU. The page loads the one it needs.

use serde::Serialize;
use webtune::burn::tensor::Device;
#[cfg(feature = "gpu")]
use webtune::burn::tensor::wgpu::wgpu;

/// What runs, and why.
#[derive(Debug, Clone, Serialize)]
pub struct BackendInfo {
    /// "webgpu" or "cpu".
    pub kind: String,
    /// The WebGPU adapter's description, if there is one.
    pub adapter: Option<String>,
    pub fallback_adapter: bool,
    /// Why this backend was chosen, in words for the page.
    pub reason: String,
    /// CPU threads the CPU backend computes with (1 in the WebGPU build).
    pub threads: usize,
    /// The adapter's buffer limits in bytes (burn requests all of them for its device).
    pub max_storage_buffer_binding_size: Option<u64>,
    pub max_buffer_size: Option<u64>,
    /// Whether the frozen weights can be kept in f16 here (`baseF16`): always on the CPU; on
    /// WebGPU when the adapter has `shader-f16` ([`webtune::device::holds_f16`]).
    pub f16_weights: bool,
}

/// CPU threads this module computes with: the pool `initThreadPool` started in the
/// multi-threaded build, else one.
fn cpu_threads() -> usize {
    #[cfg(feature = "threads")]
    {
        rayon::current_num_threads()
    }
    #[cfg(not(feature = "threads"))]
    {
        1
    }
}

/// The multi-threaded CPU build has no WebGPU: it always runs on the CPU.
#[cfg(not(feature = "gpu"))]
pub async fn select(preference: &str) -> Result<(Device, BackendInfo), String> {
    if preference == "webgpu" {
        return Err(
            "this build of webtune has no WebGPU (it is the multi-threaded CPU build)".into(),
        );
    }
    Ok((
        webtune::device::cpu(),
        BackendInfo {
            kind: "cpu".into(),
            adapter: None,
            fallback_adapter: false,
            reason: if preference == "cpu" {
                "chosen in the settings".into()
            } else {
                "this browser offers no hardware WebGPU adapter".into()
            },
            threads: cpu_threads(),
            max_storage_buffer_binding_size: None,
            max_buffer_size: None,
            f16_weights: true,
        },
    ))
}

/// `preference`: "auto", "webgpu" or "cpu".
#[cfg(feature = "gpu")]
pub async fn select(preference: &str) -> Result<(Device, BackendInfo), String> {
    let cpu = |reason: String, adapter: Option<&wgpu::Adapter>| {
        let info = adapter.map(|a| a.get_info());
        let limits = adapter.map(|a| a.limits());
        (
            webtune::device::cpu(),
            BackendInfo {
                kind: "cpu".into(),
                adapter: info.as_ref().map(describe),
                fallback_adapter: info.as_ref().is_some_and(is_software),
                reason,
                threads: cpu_threads(),
                max_storage_buffer_binding_size: limits
                    .as_ref()
                    .map(|l| l.max_storage_buffer_binding_size),
                max_buffer_size: limits.as_ref().map(|l| l.max_buffer_size),
                f16_weights: true,
            },
        )
    };
    if preference == "cpu" {
        return Ok(cpu("chosen in the settings".into(), None));
    }
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::BROWSER_WEBGPU;
    let instance = wgpu::Instance::new(desc);
    let adapter = instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        })
        .await
        .ok();
    let Some(adapter) = adapter else {
        return Ok(cpu("this browser offers no WebGPU adapter".into(), None));
    };
    let info = adapter.get_info();
    if is_software(&info) && preference != "webgpu" {
        return Ok(cpu(
            "the WebGPU adapter is a software fallback, slower than the CPU backend".into(),
            Some(&adapter),
        ));
    }
    let limits = adapter.limits();
    drop(adapter);
    let device = Device::wgpu_options()
        .init_async()
        .await
        .map_err(|e| format!("WebGPU could not start: {e:?}"))?;
    let f16_weights = webtune::device::holds_f16(&device);
    Ok((
        device,
        BackendInfo {
            kind: "webgpu".into(),
            adapter: Some(describe(&info)),
            fallback_adapter: is_software(&info),
            threads: cpu_threads(),
            reason: if preference == "webgpu" {
                "chosen in the settings".into()
            } else {
                "a hardware WebGPU adapter is available".into()
            },
            max_storage_buffer_binding_size: Some(limits.max_storage_buffer_binding_size),
            max_buffer_size: Some(limits.max_buffer_size),
            f16_weights,
        },
    ))
}

#[cfg(feature = "gpu")]
fn is_software(info: &wgpu::AdapterInfo) -> bool {
    info.device_type == wgpu::DeviceType::Cpu
}

#[cfg(feature = "gpu")]
fn describe(info: &wgpu::AdapterInfo) -> String {
    // Browsers may hide the adapter's name (privacy): say what is known.
    let name = if info.name.is_empty() {
        "unnamed adapter".to_string()
    } else {
        info.name.clone()
    };
    format!("{name} ({:?})", info.device_type)
}
