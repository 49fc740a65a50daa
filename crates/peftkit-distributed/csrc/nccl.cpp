// c10d's NCCL process group, for CUDA tensors. Compiled with PEFTKIT_WITH_NCCL when the build
// found a CUDA libtorch and the CUDA and NCCL headers (the wheel's `nvidia/*/include`, or
// CUDA_HOME); otherwise the constructor reports that this build has no NCCL.
#ifdef PEFTKIT_WITH_NCCL
#define USE_C10D_NCCL 1
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "common.h"

#include <cstdint>

extern "C" {

int pkd_has_nccl() {
#ifdef PEFTKIT_WITH_NCCL
  return 1;
#else
  return 0;
#endif
}

// An NCCL process group over the store, its communicators on CUDA device `device` (the rank's
// LOCAL_RANK), which becomes this thread's current device.
pkd_group* pkd_group_nccl(pkd_store* s, int rank, int world, int64_t timeout_ms, int device,
                          char** error) {
  pkd_group* out = nullptr;
#ifdef PEFTKIT_WITH_NCCL
  pkd::guarded(error, [&] {
    c10::cuda::set_device(static_cast<c10::DeviceIndex>(device));
    auto timeout = std::chrono::milliseconds(timeout_ms);
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = timeout;
    auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(s->store, rank, world, opts);
    out = new pkd_group{pg, timeout};
  });
#else
  (void)s;
  (void)rank;
  (void)world;
  (void)timeout_ms;
  (void)device;
  *error = pkd::copy_message(
      "this build of peftkit has no NCCL (its libtorch has no CUDA, or the CUDA/NCCL headers were "
      "not found when it was built): use the Gloo backend (train.ddp_backend = \"gloo\")");
#endif
  return out;
}

}  // extern "C"
