//! The C functions of `csrc/c10d.cpp` (compiled by this crate's build script).

use std::ffi::{c_char, c_int, c_void, CStr};
use torch_sys::C_tensor;

#[repr(C)]
pub(crate) struct pkd_store {
    _private: [u8; 0],
}

#[repr(C)]
pub(crate) struct pkd_group {
    _private: [u8; 0],
}

extern "C" {
    pub(crate) fn pkd_free(p: *mut c_void);
    pub(crate) fn pkd_store_tcp(
        host: *const c_char,
        port: c_int,
        is_server: c_int,
        world: i64,
        timeout_ms: i64,
        error: *mut *mut c_char,
    ) -> *mut pkd_store;
    pub(crate) fn pkd_store_port(
        s: *mut pkd_store,
        port: *mut c_int,
        error: *mut *mut c_char,
    ) -> c_int;
    pub(crate) fn pkd_store_prefix(
        s: *mut pkd_store,
        prefix: *const c_char,
        error: *mut *mut c_char,
    ) -> *mut pkd_store;
    pub(crate) fn pkd_store_free(s: *mut pkd_store);
    pub(crate) fn pkd_store_set(
        s: *mut pkd_store,
        key: *const c_char,
        data: *const u8,
        len: usize,
        error: *mut *mut c_char,
    ) -> c_int;
    pub(crate) fn pkd_store_get(
        s: *mut pkd_store,
        key: *const c_char,
        data: *mut *mut u8,
        len: *mut usize,
        error: *mut *mut c_char,
    ) -> c_int;
    pub(crate) fn pkd_store_add(
        s: *mut pkd_store,
        key: *const c_char,
        delta: i64,
        value: *mut i64,
        error: *mut *mut c_char,
    ) -> c_int;
    pub(crate) fn pkd_store_check(
        s: *mut pkd_store,
        key: *const c_char,
        present: *mut c_int,
        error: *mut *mut c_char,
    ) -> c_int;
    pub(crate) fn pkd_store_set_timeout(
        s: *mut pkd_store,
        timeout_ms: i64,
        error: *mut *mut c_char,
    ) -> c_int;
    pub(crate) fn pkd_group_gloo(
        s: *mut pkd_store,
        rank: c_int,
        world: c_int,
        timeout_ms: i64,
        hostname: *const c_char,
        interfaces: *const c_char,
        error: *mut *mut c_char,
    ) -> *mut pkd_group;
    pub(crate) fn pkd_has_nccl() -> c_int;
    pub(crate) fn pkd_group_nccl(
        s: *mut pkd_store,
        rank: c_int,
        world: c_int,
        timeout_ms: i64,
        device: c_int,
        error: *mut *mut c_char,
    ) -> *mut pkd_group;
    pub(crate) fn pkd_group_free(g: *mut pkd_group);
    pub(crate) fn pkd_group_allreduce(
        g: *mut pkd_group,
        tensors: *const *mut C_tensor,
        n: usize,
        op: c_int,
        error: *mut *mut c_char,
    ) -> c_int;
    pub(crate) fn pkd_group_broadcast(
        g: *mut pkd_group,
        t: *mut C_tensor,
        root: c_int,
        error: *mut *mut c_char,
    ) -> c_int;
    pub(crate) fn pkd_group_allgather(
        g: *mut pkd_group,
        out: *mut C_tensor,
        input: *mut C_tensor,
        error: *mut *mut c_char,
    ) -> c_int;
    pub(crate) fn pkd_group_barrier(g: *mut pkd_group, error: *mut *mut c_char) -> c_int;
}

/// The message a `pkd_` function set (and frees it).
pub(crate) fn take_error(error: *mut c_char) -> String {
    if error.is_null() {
        return "unknown error".to_string();
    }
    // SAFETY: a NUL-terminated string malloc'd by the C++ side, freed right after reading.
    let m = unsafe { CStr::from_ptr(error) }
        .to_string_lossy()
        .into_owned();
    unsafe { pkd_free(error as *mut c_void) };
    first_line(&m)
}

/// c10d's messages carry a C++ backtrace after the first lines: keep the cause.
fn first_line(m: &str) -> String {
    let cut = m.find("\nException raised from").unwrap_or(m.len());
    m[..cut].trim().replace('\n', " ")
}
