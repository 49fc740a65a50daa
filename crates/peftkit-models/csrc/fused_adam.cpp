// One Adam update in a single pass over memory: libtorch's `_fused_adam_` (torch.optim.Adam's
// `fused=True`, on the CPU since PyTorch 2.4), which tch does not expose. The trainer's AdamW
// keeps all trainable parameters in one flat buffer, so one call updates them all.
#include <ATen/ATen.h>

#include "error.h"

#include <exception>
#include <optional>

extern "C" {

// Adam without weight decay (the caller applies decoupled decay) on `p` with gradient `g` and
// moments `m`, `v`; `step` (a float tensor on p's device) holds this update's number, 1 for the
// first, for the bias corrections. Returns 0, or -1 with `*error` set.
int pk_fused_adam(at::Tensor* p, at::Tensor* g, at::Tensor* m, at::Tensor* v, at::Tensor* step,
                  double lr, double beta1, double beta2, double eps, char** error) {
  *error = nullptr;
  try {
    at::_fused_adam_({*p}, {*g}, {*m}, {*v}, {}, {*step}, lr, beta1, beta2, 0.0, eps,
                     /*amsgrad=*/false, /*maximize=*/false, std::nullopt, std::nullopt);
    return 0;
  } catch (const std::exception& e) {
    *error = peftkit::copy_message(e.what());
    return -1;
  }
}

}  // extern "C"
