// A dropout mask for CPU tensors drawn in parallel. libtorch's CPU `bernoulli_` draws one element at
// a time on one thread (its parallel MKL path is taken on Intel processors only): on the AMD
// development machine it was 13 % of a LoRA training step's samples, with the other core idle
// (BENCHMARKS.md, "Where a training step's time goes"). Here element i is kept when a hash of
// (seed, i) clears the threshold: the same mask for the same seed on any number of threads, the
// seed itself drawn from torch's generator by the caller (so `manual_seed` reproduces it).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "error.h"

#include <cstdint>
#include <exception>

namespace {

// splitmix64's finaliser: a bijective 64-bit mix, good enough for a Bernoulli draw per element.
inline uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

}  // namespace

extern "C" {

// A new tensor shaped like `x` (CPU, x's dtype) holding 0 where an element is dropped (probability
// `p`, 0 < p < 1) and 1 / (1 - p) where it is kept. Null with `*error` set on failure.
at::Tensor* pk_dropout_mask(at::Tensor* x, double p, uint64_t seed, char** error) {
  *error = nullptr;
  try {
    auto mask = at::empty(x->sizes(), x->options().dtype(at::kFloat).device(at::kCPU));
    float* d = mask.data_ptr<float>();
    const int64_t n = mask.numel();
    const float keep = static_cast<float>(1.0 / (1.0 - p));
    // Dropped when the hash's top 32 bits fall below p · 2^32.
    const uint64_t threshold = static_cast<uint64_t>(p * 4294967296.0);
    const uint64_t base = mix(seed + 0x9e3779b97f4a7c15ULL);
    at::parallel_for(0, n, 1 << 14, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const uint64_t h = mix(base + static_cast<uint64_t>(i) * 0x9e3779b97f4a7c15ULL);
        d[i] = (h >> 32) < threshold ? 0.0f : keep;
      }
    });
    if (x->scalar_type() != at::kFloat) {
      mask = mask.to(x->scalar_type());
    }
    return new at::Tensor(std::move(mask));
  } catch (const std::exception& e) {
    *error = peftkit::copy_message(e.what());
    return nullptr;
  }
}

}  // extern "C"
