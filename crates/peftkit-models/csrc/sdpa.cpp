// Which scaled-dot-product-attention kernels libtorch may choose
// (torch.backends.cuda.enable_{flash,mem_efficient,math,cudnn}_sdp), which tch does not expose.
#include <ATen/Context.h>

extern "C" {

// `backend`: 0 flash, 1 memory-efficient, 2 math, 3 cuDNN. Returns 0, or -1 for an unknown one.
int pk_set_sdp_backend(int backend, int enabled) {
  auto& ctx = at::globalContext();
  const bool on = enabled != 0;
  switch (backend) {
    case 0: ctx.setSDPUseFlash(on); return 0;
    case 1: ctx.setSDPUseMemEfficient(on); return 0;
    case 2: ctx.setSDPUseMath(on); return 0;
    case 3: ctx.setSDPUseCuDNN(on); return 0;
    default: return -1;
  }
}

// Whether cuDNN (its convolutions and RNNs) may compute fp32 in TF32, as
// `torch.backends.cudnn.allow_tf32` (on by default in PyTorch and libtorch).
void pk_set_cudnn_allow_tf32(int allowed) { at::globalContext().setAllowTF32CuDNN(allowed != 0); }

}  // extern "C"
