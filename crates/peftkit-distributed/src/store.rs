//! c10d's `TCPStore`: the key-value rendezvous every rank of a group connects to.

use crate::ffi::{self, pkd_store, take_error};
use crate::{DistError, Result};
use std::ffi::{c_char, c_int, CString};
use std::ptr::NonNull;
use std::time::Duration;

/// A connection to a c10d `TCPStore` (or its server), optionally seen through a key prefix.
///
/// ```no_run
/// use peftkit_distributed::Store;
/// use std::time::Duration;
/// let server = Store::serve("127.0.0.1", 0, Some(2), Duration::from_secs(30))?;
/// let client = Store::connect("127.0.0.1", server.port()?, Duration::from_secs(30))?;
/// client.set("greeting", b"hello")?;
/// assert_eq!(server.get("greeting")?, b"hello");
/// # Ok::<(), peftkit_distributed::DistError>(())
/// ```
#[derive(Debug)]
pub struct Store {
    raw: NonNull<pkd_store>,
    addr: String,
}

// SAFETY: c10d's TCPStore serialises its operations behind its own mutex; the handle is a
// reference-counted pointer that may be dropped on any thread.
unsafe impl Send for Store {}
unsafe impl Sync for Store {}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: created by pkd_store_tcp / pkd_store_prefix, freed once.
        unsafe { ffi::pkd_store_free(self.raw.as_ptr()) }
    }
}

fn cstring(what: &str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| DistError::Env(format!("{what} `{s}` contains a NUL byte")))
}

pub(crate) fn duration_millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

impl Store {
    fn open(
        host: &str,
        port: u16,
        server: bool,
        world: Option<usize>,
        timeout: Duration,
    ) -> Result<Self> {
        let c_host = cstring("host", host)?;
        let mut error: *mut c_char = std::ptr::null_mut();
        // SAFETY: valid C string; the error is taken below.
        let raw = unsafe {
            ffi::pkd_store_tcp(
                c_host.as_ptr(),
                c_int::from(port),
                c_int::from(server),
                world.map_or(-1, |w| w as i64),
                duration_millis(timeout),
                &mut error,
            )
        };
        let addr = format!("{host}:{port}");
        match NonNull::new(raw) {
            Some(raw) => Ok(Self { raw, addr }),
            None => {
                let message = take_error(error);
                if server && (message.contains("EADDRINUSE") || message.contains("in use")) {
                    Err(DistError::PortInUse { addr, message })
                } else {
                    Err(DistError::Rendezvous { addr, message })
                }
            }
        }
    }

    /// Starts the store's server on `host:port` (`port` 0: a free one, see [`Store::port`]) and
    /// connects to it. `world`: how many ranks will connect, if known. A port already in use is
    /// [`DistError::PortInUse`].
    pub fn serve(host: &str, port: u16, world: Option<usize>, timeout: Duration) -> Result<Self> {
        let mut s = Self::open(host, port, true, world, timeout)?;
        s.addr = format!("{host}:{}", s.port()?);
        Ok(s)
    }

    /// Connects to the server at `host:port`, retrying until `timeout` while it is not up yet.
    pub fn connect(host: &str, port: u16, timeout: Duration) -> Result<Self> {
        Self::open(host, port, false, None, timeout)
    }

    /// `host:port` of the server.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The server's port.
    pub fn port(&self) -> Result<u16> {
        let mut port: c_int = 0;
        let mut error = std::ptr::null_mut();
        // SAFETY: live handle.
        let rc = unsafe { ffi::pkd_store_port(self.raw.as_ptr(), &mut port, &mut error) };
        if rc != 0 || port < 0 {
            return Err(self.error(if rc != 0 {
                take_error(error)
            } else {
                "not a TCPStore".into()
            }));
        }
        Ok(port as u16)
    }

    /// A view of this store in which every key is prefixed by `prefix` (c10d's `PrefixStore`).
    pub fn prefixed(&self, prefix: &str) -> Result<Self> {
        let p = cstring("prefix", prefix)?;
        let mut error = std::ptr::null_mut();
        // SAFETY: live handle, valid string.
        let raw = unsafe { ffi::pkd_store_prefix(self.raw.as_ptr(), p.as_ptr(), &mut error) };
        NonNull::new(raw)
            .map(|raw| Self {
                raw,
                addr: self.addr.clone(),
            })
            .ok_or_else(|| self.error(take_error(error)))
    }

    pub(crate) fn raw(&self) -> *mut pkd_store {
        self.raw.as_ptr()
    }

    fn error(&self, message: String) -> DistError {
        DistError::Store {
            addr: self.addr.clone(),
            message,
        }
    }

    fn check_rc(&self, rc: c_int, error: *mut c_char) -> Result<()> {
        if rc == 0 {
            Ok(())
        } else {
            Err(self.error(take_error(error)))
        }
    }

    /// Sets `key` to `value`.
    pub fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        let k = cstring("key", key)?;
        let mut error = std::ptr::null_mut();
        // SAFETY: live handle; the slice is valid for the call.
        let rc = unsafe {
            ffi::pkd_store_set(
                self.raw.as_ptr(),
                k.as_ptr(),
                value.as_ptr(),
                value.len(),
                &mut error,
            )
        };
        self.check_rc(rc, error)
    }

    /// The value of `key`, waiting for it up to the store's timeout.
    pub fn get(&self, key: &str) -> Result<Vec<u8>> {
        let k = cstring("key", key)?;
        let mut error = std::ptr::null_mut();
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut len = 0usize;
        // SAFETY: live handle; the returned buffer is copied and freed below.
        let rc = unsafe {
            ffi::pkd_store_get(
                self.raw.as_ptr(),
                k.as_ptr(),
                &mut data,
                &mut len,
                &mut error,
            )
        };
        self.check_rc(rc, error)?;
        // SAFETY: `len` bytes malloc'd by the C++ side.
        let out = unsafe { std::slice::from_raw_parts(data, len) }.to_vec();
        unsafe { ffi::pkd_free(data.cast()) };
        Ok(out)
    }

    /// Adds `delta` to the integer at `key` (created at 0) and returns the new value.
    pub fn add(&self, key: &str, delta: i64) -> Result<i64> {
        let k = cstring("key", key)?;
        let mut error = std::ptr::null_mut();
        let mut value = 0i64;
        // SAFETY: live handle.
        let rc = unsafe {
            ffi::pkd_store_add(self.raw.as_ptr(), k.as_ptr(), delta, &mut value, &mut error)
        };
        self.check_rc(rc, error)?;
        Ok(value)
    }

    /// Whether `key` is set (does not wait).
    pub fn contains(&self, key: &str) -> Result<bool> {
        let k = cstring("key", key)?;
        let mut error = std::ptr::null_mut();
        let mut present: c_int = 0;
        // SAFETY: live handle.
        let rc = unsafe {
            ffi::pkd_store_check(self.raw.as_ptr(), k.as_ptr(), &mut present, &mut error)
        };
        self.check_rc(rc, error)?;
        Ok(present != 0)
    }

    /// How long [`Store::get`] waits for a key.
    pub fn set_timeout(&self, timeout: Duration) -> Result<()> {
        let mut error = std::ptr::null_mut();
        // SAFETY: live handle.
        let rc = unsafe {
            ffi::pkd_store_set_timeout(self.raw.as_ptr(), duration_millis(timeout), &mut error)
        };
        self.check_rc(rc, error)
    }
}
