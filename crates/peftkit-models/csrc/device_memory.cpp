// The CUDA caching allocator's statistics (what torch.cuda.memory_allocated /
// max_memory_allocated / reset_peak_memory_stats report), through c10's device-generic allocator
// interface, so nothing here needs CUDA headers and a CPU-only libtorch still links it.
#include <c10/core/CachingDeviceAllocator.h>

#include "error.h"

#include <cstdint>
#include <exception>

extern "C" {

// out[0]: bytes allocated by tensors now; out[1]: their peak since the last reset;
// out[2]: bytes reserved by the allocator now; out[3]: their peak. 0 on success, else -1 and
// `*error` set (free with `pk_free_error`).
int pk_cuda_memory(int device, int64_t* out, char** error) {
  *error = nullptr;
  try {
    auto* alloc = c10::getDeviceAllocator(c10::DeviceType::CUDA);
    auto stats = alloc->getDeviceStats(static_cast<c10::DeviceIndex>(device));
    const auto all = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    out[0] = stats.allocated_bytes[all].current;
    out[1] = stats.allocated_bytes[all].peak;
    out[2] = stats.reserved_bytes[all].current;
    out[3] = stats.reserved_bytes[all].peak;
    return 0;
  } catch (const std::exception& e) {
    *error = peftkit::copy_message(e.what());
    return -1;
  }
}

// Resets the peaks to the current values (torch.cuda.reset_peak_memory_stats).
int pk_cuda_reset_peak(int device, char** error) {
  *error = nullptr;
  try {
    c10::getDeviceAllocator(c10::DeviceType::CUDA)
        ->resetPeakStats(static_cast<c10::DeviceIndex>(device));
    return 0;
  } catch (const std::exception& e) {
    *error = peftkit::copy_message(e.what());
    return -1;
  }
}

}  // extern "C"
