//! Panics of third-party parsers turned into errors.
//!
//! The loaders of files from anywhere must fail with a one-line error naming the file, never a
//! panic; some well-kept parsers still assert on malformed input (the fuzzer found
//! `parquet`'s negative column offsets and `tokenizers`' templates naming missing special
//! tokens). Such calls run inside [`contain`], which catches the panic and returns its message;
//! while one runs, the panic hook stays silent on that thread (the message becomes the error
//! instead of a backtrace on stderr). Panics elsewhere are reported as before.

#![warn(missing_docs)]

use std::cell::Cell;
use std::sync::Once;

thread_local! {
    static CONTAINED: Cell<u32> = const { Cell::new(0) };
}

fn install_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if CONTAINED.with(Cell::get) == 0 {
                previous(info);
            }
        }));
    });
}

/// Runs `f`; a panic in it comes back as `Err(message)`.
///
/// ```
/// let r: Result<(), String> = peftkit_guard::contain(|| panic!("column start should not be negative"));
/// assert_eq!(r.unwrap_err(), "column start should not be negative");
/// assert_eq!(peftkit_guard::contain(|| 2 + 2), Ok(4));
/// ```
pub fn contain<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    install_hook();
    CONTAINED.with(|c| c.set(c.get() + 1));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CONTAINED.with(|c| c.set(c.get() - 1));
    r.map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "the parser failed".into())
    })
}
