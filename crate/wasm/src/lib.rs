//! webtune's JavaScript API (wasm-bindgen): a thin binding of the core's
//! [`webtune::session::Session`], built by wasm-pack into the page's `web/pkg*/webtune.js`.
//!
//! ```js
//! import init, { WebSession } from "./pkg/webtune.js";
//! await init();
//! const s = await WebSession.create("auto");            // "auto" | "webgpu" | "cpu"
//! s.backend();                                            // { kind, adapter, reason, ... }
//! s.loadGguf("model.gguf", bytes);                        // -> ModelInfo
//! s.loadGguf("model.gguf", bytes, true);                  // the frozen weights kept in f16
//! s.addText("notes.txt", bytes);                          // -> { name, tokens } or { name, skipped }
//! s.plan(spec);                                           // -> Plan (trainable parameters, adapter size, split)
//! s.start(spec);                                          // -> Plan; then the training loop, a call at a time:
//! const p = await s.step();                               // -> Progress { step, train_loss, val_loss, eta_secs,
//!                                                         //    status, checkpoint_due, ... }: again while "running"
//! s.pause(); s.stop();                                    // take effect at the next step()
//! s.setSaveMemory(true);                                  // recompute activations from the next step on
//! WebSession.memoryBytes();                               // the module's memory: its peak so far
//! await s.generate("Once upon", { adapted: true, max_new_tokens: 40 });
//! const { config_json, safetensors } = await s.exportAdapter("f32");
//! const gguf = await s.exportGgufLora("f16");             // Uint8Array: llama-cli --lora FILE.gguf
//! const { name, bytes } = await s.exportMerged();          // base + adapter in one file
//! const saved = await s.checkpoint();                     // Uint8Array: the whole run
//! s2.resume(saved);                                       // later, same model and texts loaded
//! WebSession.limits();                                    // { max_steps, max_batch_size, ... }
//! ```
//! `spec` is a run spec, `{ data, lora, train, optim, exec }` (the core's `RunSpec`; every key
//! optional, an unknown or mistyped one an error that names it). Errors
//! reject with a JavaScript `Error` whose message a person can read; nothing panics on input.
//! Calls must not overlap (await each): a call made while another runs is refused as busy.

// The session stays borrowed while a step or a generation awaits the GPU: by design, as the
// session must not change under a running step. An overlapping call finds it borrowed and is
// refused as "busy" (try_borrow), never a panic.
#![allow(clippy::await_holding_refcell_ref)]
// The binding exists for wasm32 only; a native build of the workspace skips it.
#![cfg(target_arch = "wasm32")]
// The multi-threaded build (nightly) reports a failed allocation on a pool thread (crash.rs).
#![cfg_attr(feature = "threads", feature(alloc_error_hook))]

mod backend;
mod crash;
mod types;
#[cfg(feature = "threads")]
mod warm;

use std::cell::{Cell, Ref, RefCell, RefMut};
use std::rc::Rc;

use js_sys::{Array, Promise, Uint8Array};
use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use webtune::base_model::{BaseModel, NamedFile};
use webtune::formats::peft::AdapterDtype;
use webtune::generate::SamplingConfig;
use webtune::memory::MemoryLimits;
use webtune::session::{FileOptions, Session};
use webtune::spec::RunSpec;

pub use backend::BackendInfo;
#[cfg(feature = "threads")]
pub use crash::{report_crashes_to, test_crash_a_pool_thread};

/// The multi-threaded build's `initThreadPool(n)`: call it once, after `init()`, before
/// `WebSession.create` (it starts `n` Web Workers sharing the module's memory).
#[cfg(feature = "threads")]
pub use wasm_bindgen_rayon::init_thread_pool;

/// `generate` options.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
struct GenerateOptions {
    chat: bool,
    adapted: bool,
    #[serde(flatten)]
    sampling: SamplingConfig,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            chat: false,
            adapted: false,
            sampling: SamplingConfig::greedy(48),
        }
    }
}

fn err(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

/// Names `base` by the Hugging Face id `id` (`org/name`), when one is given.
fn set_hub_id(base: &mut BaseModel, id: Option<String>) -> Result<(), JsError> {
    if let Some(id) = id {
        if webtune::base_model::hub_id(&id).is_none() {
            return Err(err(format!(
                "`{id}` is not a Hugging Face model id (org/name)"
            )));
        }
        base.hub_id = Some(id);
    }
    Ok(())
}

fn to_js<T: Serialize>(value: &T) -> Result<JsValue, JsError> {
    value
        .serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .map_err(err)
}

fn from_js<T: for<'de> Deserialize<'de> + Default>(value: JsValue) -> Result<T, JsError> {
    if value.is_undefined() || value.is_null() {
        return Ok(T::default());
    }
    serde_wasm_bindgen::from_value(value).map_err(|e| err(format!("invalid settings: {e}")))
}

/// A run spec from JavaScript (undefined: the defaults); an unknown or mistyped key is an error
/// naming its path (`train.stpes`), never a default silently trained with.
fn spec_from_js(value: JsValue) -> Result<RunSpec, JsError> {
    strict_from_js(value, "run spec")
}

/// `what` from JavaScript (undefined: its defaults), its unknown or mistyped keys errors that
/// name their path. Read as the JSON the object stringifies to: serde-wasm-bindgen reads only
/// the fields a struct names, so an unknown key would pass unseen.
fn strict_from_js<T: for<'de> Deserialize<'de> + Default>(
    value: JsValue,
    what: &str,
) -> Result<T, JsError> {
    if value.is_undefined() || value.is_null() {
        return Ok(T::default());
    }
    let json: String = js_sys::JSON::stringify(&value)
        .map_err(|_| err(format!("invalid {what}: not a plain object")))?
        .into();
    let de = &mut serde_json::Deserializer::from_str(&json);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        err(format!("invalid {what}: {path}: {}", e.into_inner()))
    })
}

/// The error of a call made while another holds the session.
fn busy() -> JsError {
    err("busy: wait for the previous call to finish")
}

/// The session for a call that changes it (in a promise: the error is a `JsValue`).
fn exclusive(inner: &RefCell<Session>) -> Result<RefMut<'_, Session>, JsValue> {
    inner.try_borrow_mut().map_err(|_| busy().into())
}

/// The session for a call that only reads it.
fn shared(inner: &RefCell<Session>) -> Result<Ref<'_, Session>, JsValue> {
    inner.try_borrow().map_err(|_| busy().into())
}

/// The page's session: model, texts, training run, adapter.
#[wasm_bindgen]
pub struct WebSession {
    inner: Rc<RefCell<Session>>,
    backend: BackendInfo,
    /// A pause or stop asked for while a step may hold the session: applied by the next `step`
    /// (or at once when the session is free), so asking never finds it busy.
    request: Rc<Cell<Option<Request>>>,
}

#[derive(Debug, Clone, Copy)]
enum Request {
    Pause,
    Stop,
}

impl WebSession {
    fn session(&self) -> Result<RefMut<'_, Session>, JsError> {
        self.inner.try_borrow_mut().map_err(|_| busy())
    }
}

#[wasm_bindgen]
impl WebSession {
    /// Picks the compute backend (`"auto"`: WebGPU on a hardware adapter, else the CPU) and
    /// starts an empty session.
    pub async fn create(
        #[wasm_bindgen(unchecked_param_type = "\"auto\" | \"webgpu\" | \"cpu\"")]
        preference: String,
    ) -> Result<WebSession, JsError> {
        crash::install_hooks();
        let (device, backend) = backend::select(&preference).await.map_err(err)?;
        #[cfg(feature = "threads")]
        warm::warm_gemm_call_site();
        let mut session = Session::new(device);
        // On the CPU backend the model and the run live in this module's memory, which wasm32
        // caps at 4 GiB; on WebGPU in the GPU's buffers, each within the adapter's binding size
        // (the GPU's memory in all is not something WebGPU tells).
        session.set_memory_limits(if backend.kind == "cpu" {
            MemoryLimits {
                total: Some(webtune::memory::WASM32_BYTES),
                buffer: None,
            }
        } else {
            MemoryLimits {
                total: None,
                buffer: backend.max_storage_buffer_binding_size,
            }
        });
        Ok(WebSession {
            inner: Rc::new(RefCell::new(session)),
            backend,
            request: Rc::new(Cell::new(None)),
        })
    }

    /// Which backend runs, and why: `{ kind: "webgpu" | "cpu", adapter, reason, limits }`.
    #[wasm_bindgen(unchecked_return_type = "BackendInfo")]
    pub fn backend(&self) -> Result<JsValue, JsError> {
        to_js(&self.backend)
    }

    /// Loads a GGUF model from its bytes; returns ModelInfo. With `baseF16` (the CPU backend, or
    /// WebGPU with `shader-f16`: `BackendInfo.f16_weights`; ignored elsewhere) its frozen weights
    /// are kept in f16 as they load: half the base's memory (`exec.base_f16`;
    /// `ModelInfo.base_f16` says what was done). `hubId`: the model's Hugging Face id
    /// (`org/name`), which adapters name as their base (else the file's own, or its name).
    #[wasm_bindgen(js_name = loadGguf, unchecked_return_type = "ModelInfo")]
    pub fn load_gguf(
        &self,
        name: String,
        bytes: Vec<u8>,
        #[wasm_bindgen(js_name = "baseF16")] base_f16: Option<bool>,
        #[wasm_bindgen(js_name = "hubId")] hub_id: Option<String>,
    ) -> Result<JsValue, JsError> {
        let mut s = self.session()?;
        let device = s.device().clone();
        let mut base = BaseModel::from_gguf_with(&name, bytes, &device, base_f16.unwrap_or(false))
            .map_err(err)?;
        set_hub_id(&mut base, hub_id)?;
        to_js(&s.set_model(base))
    }

    /// Loads a Hugging Face model from files (`config.json`, `tokenizer.json`, safetensors...):
    /// `names[i]` is the name of `files[i]` (a Uint8Array); `baseF16` and `hubId` as for
    /// `loadGguf`.
    #[wasm_bindgen(js_name = loadHfFiles, unchecked_return_type = "ModelInfo")]
    pub fn load_hf_files(
        &self,
        #[wasm_bindgen(js_name = "modelName")] model_name: String,
        names: Vec<String>,
        files: Array,
        #[wasm_bindgen(js_name = "baseF16")] base_f16: Option<bool>,
        #[wasm_bindgen(js_name = "hubId")] hub_id: Option<String>,
    ) -> Result<JsValue, JsError> {
        let mut s = self.session()?;
        if names.len() != files.length() as usize {
            return Err(err("names and files differ in length"));
        }
        let files: Vec<NamedFile> = names
            .into_iter()
            .zip(files.iter())
            .map(|(n, f)| NamedFile::new(n, Uint8Array::new(&f).to_vec()))
            .collect();
        let device = s.device().clone();
        let mut base =
            BaseModel::from_hf_files_with(&model_name, files, &device, base_f16.unwrap_or(false))
                .map_err(err)?;
        set_hub_id(&mut base, hub_id)?;
        to_js(&s.set_model(base))
    }

    /// Opens an adapter for the next run to continue and for `generate({ adapted: true })` to
    /// compare before it: a PEFT adapter (`adapter_config.json` and
    /// `adapter_model.safetensors`, or one ZIP of them) or a webtune checkpoint (a saved run,
    /// with AdamW's state). `names[i]` names `files[i]`. Returns `{ name, lora, parameters,
    /// optimizer_state }`; an adapter of another model is refused with the reason.
    #[wasm_bindgen(js_name = openAdapter, unchecked_return_type = "AdapterInfo")]
    pub fn open_adapter(&self, names: Vec<String>, files: Array) -> Result<JsValue, JsError> {
        if names.len() != files.length() as usize {
            return Err(err("names and files differ in length"));
        }
        let files: Vec<NamedFile> = names
            .into_iter()
            .zip(files.iter())
            .map(|(n, f)| NamedFile::new(n, Uint8Array::new(&f).to_vec()))
            .collect();
        let info = self.session()?.open_adapter(files).map_err(err)?;
        to_js(&info)
    }

    /// Forgets the opened adapter: the next run starts with fresh LoRA matrices.
    #[wasm_bindgen(js_name = closeAdapter)]
    pub fn close_adapter(&self) -> Result<(), JsError> {
        self.session()?.close_adapter();
        Ok(())
    }

    /// Adds a file: plain text, or chat data (`.jsonl`, `.json`, `.csv`: records of messages,
    /// prompt/completion or instruction/output; `options`: `{ format, columns: { prompt,
    /// response } }`, every key optional). Returns `TextInfo`: `{ name, format, tokens,
    /// examples, problems, columns, preview }`, or `{ name, skipped: reason }`.
    #[wasm_bindgen(js_name = addText, unchecked_return_type = "TextInfo")]
    pub fn add_text(
        &self,
        name: String,
        bytes: Vec<u8>,
        #[wasm_bindgen(unchecked_param_type = "FileOptions")] options: Option<JsValue>,
    ) -> Result<JsValue, JsError> {
        let options: FileOptions =
            strict_from_js(options.unwrap_or(JsValue::UNDEFINED), "file options")?;
        let info = self
            .session()?
            .add_file(&name, &bytes, &options)
            .map_err(err)?;
        to_js(&info)
    }

    #[wasm_bindgen(js_name = removeText)]
    pub fn remove_text(&self, name: String) -> Result<(), JsError> {
        self.session()?.remove_text(&name);
        Ok(())
    }

    /// What loading a model and training it with `spec` would take in memory here, before the
    /// model is loaded: `name` is its GGUF file's (then `head` is the file's first bytes, 32 MiB
    /// are plenty) or `config.json` (then `head` is that file); `fileBytes` the size of the
    /// model's files in all. `fits` false: `advice` says what would fit, or that nothing does.
    #[wasm_bindgen(js_name = modelMemory, unchecked_return_type = "MemoryEstimate")]
    pub fn model_memory(
        &self,
        name: String,
        head: Vec<u8>,
        #[wasm_bindgen(js_name = "fileBytes")] file_bytes: f64,
        #[wasm_bindgen(unchecked_param_type = "RunSpec")] spec: JsValue,
    ) -> Result<JsValue, JsError> {
        use webtune::memory::{ModelShape, estimate};

        let spec = spec_from_js(spec)?;
        let file_bytes = file_bytes.max(0.0) as u64;
        let shape = if name.to_lowercase().ends_with(".gguf") {
            ModelShape::from_gguf_head(&name, head, file_bytes)
        } else {
            let json = String::from_utf8(head).map_err(|_| err(format!("{name} is not UTF-8")))?;
            ModelShape::from_config_json(&name, &json)
        }
        .map_err(err)?;
        let limits = self.session()?.memory_limits();
        to_js(&estimate(&shape, &spec, None, Some(file_bytes), limits))
    }

    /// The memory (bytes) a model and a run may take here: `modelMemory` and `plan` check against
    /// it and `start` refuses a run over it. The CPU backend starts at wasm32's 4 GiB; a lower
    /// limit suits a machine with less to spare; null: no limit.
    #[wasm_bindgen(js_name = setMemoryLimit)]
    pub fn set_memory_limit(&self, bytes: Option<f64>) -> Result<(), JsError> {
        let mut s = self.session()?;
        let limits = MemoryLimits {
            total: bytes.map(|b| b.max(0.0) as u64),
            ..s.memory_limits()
        };
        s.set_memory_limits(limits);
        Ok(())
    }

    /// What a run spec implies: trainable parameters, adapter size, train/validation split.
    #[wasm_bindgen(unchecked_return_type = "Plan")]
    pub fn plan(
        &self,
        #[wasm_bindgen(unchecked_param_type = "RunSpec")] spec: JsValue,
    ) -> Result<JsValue, JsError> {
        let spec = spec_from_js(spec)?;
        let plan = self.session()?.plan(&spec).map_err(err)?;
        to_js(&plan)
    }

    /// Times one training step of this spec (on a throwaway copy of the model) so that
    /// `plan` can estimate a run's duration; resolves to training tokens per second.
    #[wasm_bindgen(unchecked_return_type = "Promise<number>")]
    pub fn measure(
        &self,
        #[wasm_bindgen(unchecked_param_type = "RunSpec")] spec: JsValue,
    ) -> Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let spec = spec_from_js(spec).map_err(JsValue::from)?;
            let mut s = exclusive(&inner)?;
            let tps = s.measure(&spec).await.map_err(|e| JsValue::from(err(e)))?;
            Ok(JsValue::from_f64(tps))
        })
    }

    /// Starts a run of `spec` (a `RunSpec`: `{ data, lora, train, optim, exec }`, every key
    /// optional, an unknown one an error naming it) with fresh LoRA matrices.
    #[wasm_bindgen(unchecked_return_type = "Plan")]
    pub fn start(
        &self,
        #[wasm_bindgen(unchecked_param_type = "RunSpec")] spec: JsValue,
    ) -> Result<JsValue, JsError> {
        let spec = spec_from_js(spec)?;
        let plan = self.session()?.start(spec).map_err(err)?;
        to_js(&plan)
    }

    /// The training loop, one call at a time (the core's `Trainer::next`): resolves to Progress,
    /// whose `status` ("running", "paused", "finished", "stopped") says whether to call again
    /// and `checkpoint_due` when to store `checkpoint()`. A `pause()` or `stop()` asked for in
    /// between takes effect here.
    #[wasm_bindgen(unchecked_return_type = "Promise<Progress>")]
    pub fn step(&self) -> Promise {
        let inner = self.inner.clone();
        let request = self.request.clone();
        future_to_promise(async move {
            let mut s = exclusive(&inner)?;
            match request.take() {
                Some(Request::Pause) => s.pause(),
                Some(Request::Stop) => s.stop(),
                None => {}
            }
            let progress = s.step().await.map_err(|e| JsValue::from(err(e)))?;
            to_js(&progress).map_err(JsValue::from)
        })
    }

    /// Pauses the run before its next step: the next `step()` resolves with status "paused"
    /// (and a checkpoint due) without stepping; the one after continues.
    pub fn pause(&self) {
        // A stop asked for is not undone by a pause.
        if !matches!(self.request.get(), Some(Request::Stop)) {
            self.request.set(Some(Request::Pause));
        }
    }

    /// The adapter for llama.cpp (`llama-cli --lora FILE.gguf`): a GGUF LoRA file as a
    /// `Uint8Array`; dtype "f32" or "f16".
    #[wasm_bindgen(js_name = exportGgufLora, unchecked_return_type = "Promise<NamedBytes>")]
    pub fn export_gguf_lora(
        &self,
        #[wasm_bindgen(unchecked_param_type = "\"f32\" | \"f16\"")] dtype: String,
    ) -> Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let dtype = match dtype.as_str() {
                "f16" => AdapterDtype::F16,
                _ => AdapterDtype::F32,
            };
            let s = shared(&inner)?;
            let bytes = s
                .export_gguf_lora(dtype)
                .await
                .map_err(|e| JsValue::from(err(e)))?;
            Ok(Uint8Array::from(bytes.as_slice()).into())
        })
    }

    /// The base model with the adapter folded in, as one file: `{ name, bytes }` (a GGUF F16
    /// file for GGUF bases, else a zip of the Hugging Face folder).
    #[wasm_bindgen(js_name = exportMerged, unchecked_return_type = "Promise<NamedBytes>")]
    pub fn export_merged(&self) -> Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let s = shared(&inner)?;
            let (name, bytes) = s.export_merged().await.map_err(|e| JsValue::from(err(e)))?;
            let out = js_sys::Object::new();
            js_sys::Reflect::set(&out, &"name".into(), &name.into())?;
            js_sys::Reflect::set(&out, &"bytes".into(), &Uint8Array::from(bytes.as_slice()))?;
            Ok(out.into())
        })
    }

    /// The current run as a checkpoint file (`Uint8Array`): store it, and `resume` it after a
    /// reload, a crash or on another backend.
    #[wasm_bindgen(unchecked_return_type = "Promise<Uint8Array<ArrayBuffer>>")]
    pub fn checkpoint(&self) -> Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let s = shared(&inner)?;
            let bytes = s.checkpoint().await.map_err(|e| JsValue::from(err(e)))?;
            Ok(Uint8Array::from(bytes.as_slice()).into())
        })
    }

    /// Continues the run saved by `checkpoint` (the same model and text files must be loaded);
    /// returns its Plan. Then `step` as after `start`.
    #[wasm_bindgen(unchecked_return_type = "Plan")]
    pub fn resume(&self, bytes: Vec<u8>) -> Result<JsValue, JsError> {
        let plan = self
            .session()?
            .resume(webtune::checkpoint::FILE_NAME, bytes)
            .map_err(err)?;
        to_js(&plan)
    }

    /// "Save memory" for the current run's steps to come (`TrainConfig::recompute`): the same
    /// gradients, less memory, slower steps; a resumed run may switch it.
    #[wasm_bindgen(js_name = setSaveMemory)]
    pub fn set_save_memory(&self, on: bool) -> Result<(), JsError> {
        self.session()?.set_recompute(on).map_err(err)
    }

    /// The run's progress so far (after `resume`, the steps before the checkpoint).
    #[wasm_bindgen(unchecked_return_type = "Progress[]")]
    pub fn history(&self) -> Result<JsValue, JsError> {
        let s = self.session()?;
        let history = s.trainer().map(|t| t.history.clone()).unwrap_or_default();
        to_js(&history)
    }

    /// Whether there is an adapter to export (a run took at least one good step).
    #[wasm_bindgen(js_name = hasAdapter)]
    pub fn has_adapter(&self) -> Result<bool, JsError> {
        Ok(self
            .session()?
            .trainer()
            .is_some_and(|t| t.steps_done() > 0))
    }

    /// The defaults the page's form starts from (`{ spec: RunSpec, sample_tokens }`), the same
    /// the CLI's flags default to.
    #[wasm_bindgen(unchecked_return_type = "Defaults")]
    pub fn defaults() -> Result<JsValue, JsError> {
        to_js(&webtune::defaults::defaults())
    }

    /// The bytes of the module's memory: what the page's wasm holds at its peak so far (a wasm
    /// memory grows and never shrinks). The benchmark reports it as the page's peak memory.
    #[wasm_bindgen(js_name = memoryBytes)]
    pub fn memory_bytes() -> f64 {
        (core::arch::wasm32::memory_size(0) as f64) * 65536.0
    }

    /// The settings' limits (`{ max_steps, max_batch_size, max_rank, ... }`): the page shows them.
    #[wasm_bindgen(unchecked_return_type = "SettingLimits")]
    pub fn limits() -> Result<JsValue, JsError> {
        to_js(&webtune::limits::setting_limits())
    }

    /// Ends the run early (the adapter keeps what it learned): at once when no step is under
    /// way, else when the step ends (the next `step()` resolves with status "stopped").
    pub fn stop(&self) {
        match self.inner.try_borrow_mut() {
            Ok(mut s) => s.stop(),
            Err(_) => self.request.set(Some(Request::Stop)),
        }
    }

    /// Completes a prompt; options `{ chat, adapted, max_new_tokens, temperature, top_k, top_p, seed }`.
    ///
    /// `onText` (optional) is called with the completion so far as it grows; returning `false`
    /// from it stops the generation there.
    #[wasm_bindgen(unchecked_return_type = "Promise<string>")]
    pub fn generate(
        &self,
        prompt: String,
        #[wasm_bindgen(unchecked_param_type = "GenerateOptions")] options: Option<JsValue>,
        #[wasm_bindgen(
            js_name = "onText",
            unchecked_param_type = "((textSoFar: string) => boolean | void) | null"
        )]
        on_text: Option<js_sys::Function>,
    ) -> Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let o: GenerateOptions =
                from_js(options.unwrap_or(JsValue::UNDEFINED)).map_err(JsValue::from)?;
            let s = shared(&inner)?;
            let text = s
                .generate_streaming(&prompt, o.chat, &o.sampling, o.adapted, |so_far| {
                    on_text.as_ref().is_none_or(|f| {
                        f.call1(&JsValue::NULL, &JsValue::from_str(so_far))
                            .map(|r| r.as_bool() != Some(false))
                            .unwrap_or(true)
                    })
                })
                .await
                .map_err(|e| JsValue::from(err(e)))?;
            Ok(JsValue::from_str(&text))
        })
    }

    /// The validation loss of the model as it is now (the run's adapter included), on the
    /// run's validation windows: a number, or null without validation windows.
    #[wasm_bindgen(unchecked_return_type = "Promise<number | null>")]
    pub fn evaluate(&self) -> Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let s = shared(&inner)?;
            let loss = s.evaluate().await.map_err(|e| JsValue::from(err(e)))?;
            Ok(loss.map_or(JsValue::NULL, |l| JsValue::from_f64(f64::from(l))))
        })
    }

    /// The run taken further (a ZIP, as a Uint8Array): `train_peft.py` (PyTorch + transformers
    /// + PEFT, for one GPU or `accelerate launch` on many), the run spec, the windows as they
    /// were trained, and the adapter to continue.
    #[wasm_bindgen(js_name = exportRecipe, unchecked_return_type = "Promise<Uint8Array<ArrayBuffer>>")]
    pub fn export_recipe(&self) -> Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let s = shared(&inner)?;
            let zip = s.recipe_zip().await.map_err(|e| JsValue::from(err(e)))?;
            Ok(Uint8Array::from(zip.as_slice()).into())
        })
    }

    /// The PEFT adapter: `{ config_json: string, safetensors: Uint8Array, zip: Uint8Array }` (the
    /// zip holds both files); dtype "f32" or "f16".
    #[wasm_bindgen(js_name = exportAdapter, unchecked_return_type = "Promise<ExportedAdapter>")]
    pub fn export_adapter(
        &self,
        #[wasm_bindgen(unchecked_param_type = "\"f32\" | \"f16\"")] dtype: String,
    ) -> Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let dtype = match dtype.as_str() {
                "f16" => AdapterDtype::F16,
                _ => AdapterDtype::F32,
            };
            let s = shared(&inner)?;
            let files = s
                .export_adapter(dtype)
                .await
                .map_err(|e| JsValue::from(err(e)))?;
            let out = js_sys::Object::new();
            let zip = Uint8Array::from(files.to_zip().as_slice());
            js_sys::Reflect::set(&out, &"config_json".into(), &files.config_json.into())?;
            let bytes = Uint8Array::from(files.safetensors.as_slice());
            js_sys::Reflect::set(&out, &"safetensors".into(), &bytes)?;
            js_sys::Reflect::set(&out, &"zip".into(), &zip)?;
            Ok(out.into())
        })
    }
}
