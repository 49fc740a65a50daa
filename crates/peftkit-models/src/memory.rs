//! Memory in use and its peak on a device, as HF Trainer's memory metrics and
//! `torch.cuda.max_memory_allocated` report them: on CUDA the caching allocator's bytes held by
//! tensors, on the CPU the process's resident set (Linux `/proc`).

use crate::ffi::{pk_cuda_memory, pk_cuda_reset_peak, take_error};
use crate::{ModelError, Result};
use serde::{Deserialize, Serialize};
use std::ffi::{c_char, c_int};
use tch::Device;

/// What a [`MemoryUsage`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemorySource {
    /// The CUDA caching allocator's bytes allocated to tensors (`torch.cuda.memory_allocated`).
    CudaAllocated,
    /// The whole process's resident memory (`VmRSS`, peak `VmHWM`), libtorch and data included.
    ProcessResident,
}

/// Bytes in use now and at the peak since the last [`reset_peak_memory`] (or the process's
/// start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryUsage {
    /// What is counted.
    pub source: MemorySource,
    /// Bytes in use now.
    pub current_bytes: i64,
    /// Peak bytes.
    pub peak_bytes: i64,
    /// CUDA only: bytes the allocator reserved from the driver (used or cached), now and peak.
    pub reserved_bytes: Option<(i64, i64)>,
}

/// Memory in use on `device`.
///
/// ```
/// let m = peftkit_models::memory_usage(tch::Device::Cpu)?;
/// assert!(m.peak_bytes >= m.current_bytes && m.current_bytes > 0);
/// # Ok::<(), peftkit_models::ModelError>(())
/// ```
pub fn memory_usage(device: Device) -> Result<MemoryUsage> {
    match device {
        Device::Cuda(i) => {
            let mut out = [0i64; 4];
            cuda_call(i, |e| unsafe {
                pk_cuda_memory(i as c_int, out.as_mut_ptr(), e)
            })?;
            Ok(MemoryUsage {
                source: MemorySource::CudaAllocated,
                current_bytes: out[0],
                peak_bytes: out[1],
                reserved_bytes: Some((out[2], out[3])),
            })
        }
        Device::Cpu => {
            let status = std::fs::read_to_string("/proc/self/status").map_err(|e| {
                ModelError::Memory(format!(
                    "/proc/self/status: {e} (CPU memory is read from Linux's /proc)"
                ))
            })?;
            let field = |name: &str| -> Result<i64> {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse::<i64>().ok())
                    .map(|kib| kib * 1024)
                    .ok_or_else(|| {
                        ModelError::Memory(format!("/proc/self/status has no `{name}` line"))
                    })
            };
            Ok(MemoryUsage {
                source: MemorySource::ProcessResident,
                current_bytes: field("VmRSS:")?,
                peak_bytes: field("VmHWM:")?,
                reserved_bytes: None,
            })
        }
        other => Err(no_statistics(other)),
    }
}

/// Resets the peak of [`memory_usage`] to the current value (`torch.cuda.reset_peak_memory_stats`;
/// on the CPU Linux's `clear_refs`, which resets the whole process's high-water mark).
///
/// On the CPU it first hands the C allocator's free memory back to the system
/// ([`release_free_host_memory`]), so the resident figures that follow start from the memory in
/// use, not from what was freed before (loading a model and quantizing it frees a full-precision
/// copy of its weights that glibc would otherwise keep resident).
pub fn reset_peak_memory(device: Device) -> Result<()> {
    match device {
        Device::Cuda(i) => cuda_call(i, |e| unsafe { pk_cuda_reset_peak(i as c_int, e) }),
        Device::Cpu => {
            release_free_host_memory();
            std::fs::write("/proc/self/clear_refs", "5").map_err(|e| {
                ModelError::Memory(format!(
                    "/proc/self/clear_refs: {e} (cannot reset the peak)"
                ))
            })
        }
        other => Err(no_statistics(other)),
    }
}

/// Returns the free memory of the C heap to the system (glibc's `malloc_trim(0)`; a no-op where
/// the C library is not glibc). Freed tensors stay resident in glibc's arenas otherwise, which
/// makes the process's resident size overstate what is in use. Returns whether memory was
/// released.
pub fn release_free_host_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> c_int;
        }
        // SAFETY: malloc_trim only walks glibc's own arenas; it takes no pointers of ours.
        unsafe { malloc_trim(0) != 0 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

fn no_statistics(device: Device) -> ModelError {
    ModelError::Memory(format!("no memory statistics for device {device:?}"))
}

fn cuda_call(index: usize, f: impl FnOnce(*mut *mut c_char) -> c_int) -> Result<()> {
    if !tch::Cuda::is_available() || index >= tch::Cuda::device_count() as usize {
        return Err(ModelError::NoCuda(format!("cuda:{index}")));
    }
    let mut error: *mut c_char = std::ptr::null_mut();
    if f(&mut error) != 0 {
        return Err(ModelError::Memory(format!(
            "cuda:{index}: {}",
            take_error(error)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_heap_memory_is_returned_before_the_peak_is_reset() {
        // 256 MiB in 64 KiB blocks (below glibc's mmap threshold: they come from the heap),
        // touched, with a block allocated after them that stays, so the heap cannot simply
        // shrink at its top when they are freed. Other tests run beside this one in the same
        // process, hence the wide margin (half of what is freed).
        let blocks: Vec<Vec<u8>> = (0..4096).map(|_| vec![1u8; 64 << 10]).collect();
        let pin = vec![1u8; 64 << 10];
        let held = memory_usage(Device::Cpu).unwrap().current_bytes;
        drop(blocks);
        let freed = memory_usage(Device::Cpu).unwrap().current_bytes;
        release_free_host_memory();
        let after = memory_usage(Device::Cpu).unwrap().current_bytes;
        eprintln!("resident: {held} B holding the blocks, {freed} B freed, {after} B released");
        assert!(
            after + (128 << 20) < held,
            "resident {held} B with the blocks, {after} B after freeing and releasing them"
        );
        drop(pin);
    }

    #[test]
    fn cpu_usage_is_the_process_resident_set() {
        let m = memory_usage(Device::Cpu).unwrap();
        assert_eq!(m.source, MemorySource::ProcessResident);
        assert!(m.current_bytes > 1 << 20 && m.peak_bytes >= m.current_bytes);
        assert!(m.reserved_bytes.is_none());
    }

    #[test]
    fn cuda_without_a_gpu_is_a_clear_error() {
        if tch::Cuda::is_available() {
            return;
        }
        for r in [
            memory_usage(Device::Cuda(0)).map(|_| ()),
            reset_peak_memory(Device::Cuda(0)),
        ] {
            assert!(matches!(r, Err(ModelError::NoCuda(_))), "{r:?}");
        }
    }
}
