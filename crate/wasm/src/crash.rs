//! Telling the page that the module crashed, from whichever thread crashed.
//!
//! A panic (wasm builds abort on panic) or a failed allocation ends the module with a trap. On the
//! session's own worker, worker.js sees the trap and the page starts a fresh worker that resumes
//! the run. In the multi-threaded build the trap can also happen on one of rayon's pool workers:
//! its error goes only to the session's worker, which is then blocked waiting for the pool, so
//! nobody would hear it and the page would wait forever. So the panic hook (and, in that build,
//! the allocation-failure hook) also posts `{ type: "crashed", message }` on a `BroadcastChannel`
//! the page listens to (`reportCrashesTo`), before the trap, on the thread that crashes. Only in
//! that build: in the WebGPU build a trap can follow a lost GPU, and the page must hear that cause
//! first (worker.js) to move the run to the CPU.

use std::sync::Once;

static HOOKS: Once = Once::new();

/// Installs the hooks (once): the panic's message goes to the console, as before, and in the
/// multi-threaded build to the page's channel when one is set.
pub fn install_hooks() {
    HOOKS.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            console_error_panic_hook::hook(info);
            #[cfg(feature = "threads")]
            pool::broadcast(&info.to_string());
        }));
        #[cfg(feature = "threads")]
        std::alloc::set_alloc_error_hook(pool::out_of_memory);
    });
}

#[cfg(feature = "threads")]
pub use pool::{report_crashes_to, test_crash_a_pool_thread};

#[cfg(feature = "threads")]
mod pool {
    use std::alloc::Layout;
    use std::fmt::Write;
    use std::sync::OnceLock;

    use wasm_bindgen::prelude::*;

    /// The page's channel for this worker (set once: a fresh worker is a fresh module).
    static CHANNEL: OnceLock<String> = OnceLock::new();

    #[wasm_bindgen(inline_js = "export function broadcast_crash(channel, message) {
  try { new BroadcastChannel(channel).postMessage({ type: 'crashed', message }); } catch (_) {}
}")]
    extern "C" {
        fn broadcast_crash(channel: &str, message: &str);
    }

    /// `reportCrashesTo(channel)`: where the hooks post a crash (a `BroadcastChannel` name the
    /// page listens to; unique to the worker). Call it before `WebSession.create`.
    #[wasm_bindgen(js_name = reportCrashesTo)]
    pub fn report_crashes_to(channel: String) {
        let _ = CHANNEL.set(channel);
        super::install_hooks();
    }

    pub(super) fn broadcast(message: &str) {
        if let Some(channel) = CHANNEL.get() {
            broadcast_crash(channel, message);
        }
    }

    /// The allocation-failure hook: no allocation here, memory has just run out.
    pub(super) fn out_of_memory(layout: Layout) {
        let mut message = StackText::<96>::default();
        let _ = write!(
            message,
            "out of memory (an allocation of {} bytes failed)",
            layout.size()
        );
        broadcast(message.as_str());
    }

    /// A test hook for the page's durability test (`tests/e2e/durable.test.mjs`): makes one of
    /// the pool's threads panic, as a bug inside a parallel matmul would.
    #[wasm_bindgen(js_name = testCrashAPoolThread)]
    pub fn test_crash_a_pool_thread() {
        rayon::spawn(|| panic!("a pool thread crashed on purpose (the durability test)"));
    }

    /// Text formatted without allocating (cut at `N` bytes, on a character boundary).
    struct StackText<const N: usize> {
        bytes: [u8; N],
        len: usize,
    }

    impl<const N: usize> Default for StackText<N> {
        fn default() -> Self {
            Self {
                bytes: [0; N],
                len: 0,
            }
        }
    }

    impl<const N: usize> StackText<N> {
        fn as_str(&self) -> &str {
            std::str::from_utf8(&self.bytes[..self.len]).unwrap_or("out of memory")
        }
    }

    impl<const N: usize> Write for StackText<N> {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            for c in s.chars() {
                let mut utf8 = [0; 4];
                let c = c.encode_utf8(&mut utf8).as_bytes();
                if self.len + c.len() > N {
                    return Err(std::fmt::Error);
                }
                self.bytes[self.len..self.len + c.len()].copy_from_slice(c);
                self.len += c.len();
            }
            Ok(())
        }
    }
}
