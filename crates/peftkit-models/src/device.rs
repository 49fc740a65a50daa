//! `--device cpu|cuda|cuda:N|auto`.

use crate::{ModelError, Result};
use tch::Device;

/// Parses a device name: `cpu`, `cuda` (GPU 0), `cuda:N`, or `auto` (CUDA when available).
/// Asking for CUDA where it is not available is an error, not a silent fallback.
///
/// ```
/// assert_eq!(peftkit_models::parse_device("cpu").unwrap(), tch::Device::Cpu);
/// assert!(peftkit_models::parse_device("tpu").is_err());
/// ```
pub fn parse_device(name: &str) -> Result<Device> {
    let name = name.trim().to_ascii_lowercase();
    match name.as_str() {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available()),
        "cuda" | "gpu" => cuda(0, &name),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => cuda(i, &name),
            _ => Err(ModelError::Device(name.clone())),
        },
    }
}

fn cuda(index: usize, name: &str) -> Result<Device> {
    let count = tch::Cuda::device_count();
    if !tch::Cuda::is_available() || count < 1 {
        return Err(ModelError::NoCuda(name.to_string()));
    }
    if index as i64 >= count {
        return Err(ModelError::NoSuchGpu {
            name: name.to_string(),
            count,
        });
    }
    Ok(Device::Cuda(index))
}
