// A linear product `x W^T` whose weight is produced by a callback and is *not* saved for the
// backward pass: the backward node calls the callback again (as bitsandbytes' MatMul4Bit
// re-dequantizes its 4-bit weight in backward). tch cannot define autograd functions in Rust,
// hence this one C++ node. The weight is treated as a constant (no gradient flows to it).
#include <ATen/ATen.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>

#include "error.h"

#include <memory>
#include <stdexcept>
#include <string>

extern "C" {
// Returns a heap-allocated tensor (ownership passes to the caller), or null on failure.
typedef at::Tensor* (*pk_weight_fn)(void* ctx);
// Frees the callback's context.
typedef void (*pk_drop_fn)(void* ctx);
}

namespace {

struct WeightSource {
  pk_weight_fn get_fn;
  pk_drop_fn drop_fn;
  void* ctx;

  WeightSource(pk_weight_fn g, pk_drop_fn d, void* c) : get_fn(g), drop_fn(d), ctx(c) {}
  WeightSource(const WeightSource&) = delete;
  WeightSource& operator=(const WeightSource&) = delete;
  ~WeightSource() { drop_fn(ctx); }

  at::Tensor get() const {
    at::Tensor* p = get_fn(ctx);
    if (p == nullptr) {
      throw std::runtime_error("the weight callback of a recomputed linear failed");
    }
    at::Tensor w = std::move(*p);
    delete p;
    return w;
  }
};

// `[..., in] x [out, in]^T -> [..., out]` as one matrix product; the result is never a view
// (a view created under no-grad could not take an autograd history).
at::Tensor product(const at::Tensor& x, const at::Tensor& w) {
  auto out_shape = x.sizes().vec();
  out_shape.back() = w.size(0);
  auto x2 = x.reshape({-1, x.size(-1)});
  return at::_unsafe_view(at::mm(x2, w.t()), out_shape);
}

struct RecomputedLinearBackward : public torch::autograd::Node {
  std::shared_ptr<WeightSource> source;

  std::string name() const override { return "RecomputedLinearBackward"; }

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    torch::autograd::variable_list out(1);
    if (!source) {
      throw std::runtime_error(
          "RecomputedLinearBackward: the graph was already freed (use retain_graph to "
          "backpropagate twice)");
    }
    const at::Tensor& g = grads[0];
    if (g.defined() && should_compute_output(0)) {
      at::NoGradGuard no_grad;
      at::Tensor w = source->get();
      auto in_shape = g.sizes().vec();
      in_shape.back() = w.size(1);
      auto g2 = g.reshape({-1, g.size(-1)});
      out[0] = at::_unsafe_view(at::mm(g2, w.to(g.scalar_type())), in_shape);
    }
    return out;
  }

  void release_variables() override { source.reset(); }
};

}  // namespace

extern "C" {

// `x W^T` with `W = weight(ctx)`; when `x` requires a gradient (and grad mode is on) the result's
// backward computes `grad W` with a fresh `W = weight(ctx)`. `drop(ctx)` is called exactly once,
// when neither the forward nor the graph needs the callback any more. On failure returns null
// and sets `*error` (free it with `pk_free_error`).
at::Tensor* pk_recomputed_linear(at::Tensor* x, pk_weight_fn weight, pk_drop_fn drop, void* ctx,
                                 char** error) {
  *error = nullptr;
  std::shared_ptr<WeightSource> source;
  try {
    source = std::make_shared<WeightSource>(weight, drop, ctx);
  } catch (const std::exception& e) {
    drop(ctx);
    *error = peftkit::copy_message(e.what());
    return nullptr;
  }
  try {
    at::Tensor y;
    {
      at::NoGradGuard no_grad;
      at::Tensor w = source->get();
      if (w.dim() != 2 || w.size(1) != x->size(-1)) {
        throw std::runtime_error("recomputed linear: weight " + std::to_string(w.dim()) +
                                 "-d of shape " + c10::str(w.sizes()) +
                                 " does not fit an input of shape " + c10::str(x->sizes()));
      }
      y = product(*x, w.to(x->scalar_type()));
    }
    if (at::GradMode::is_enabled() && x->requires_grad()) {
      auto node = std::shared_ptr<RecomputedLinearBackward>(new RecomputedLinearBackward(),
                                                            torch::autograd::deleteNode);
      node->source = source;
      node->set_next_edges(torch::autograd::collect_next_edges(*x));
      torch::autograd::set_history(y, node);
    }
    return new at::Tensor(std::move(y));
  } catch (const std::exception& e) {
    *error = peftkit::copy_message(e.what());
    return nullptr;
  }
}

}  // extern "C"
