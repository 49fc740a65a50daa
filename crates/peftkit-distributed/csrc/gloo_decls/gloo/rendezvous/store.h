// peftkit: declarations only. See ../../README.md.
#pragma once

#include <chrono>
#include <string>
#include <vector>

namespace gloo {
namespace rendezvous {

// GLOO_STORE_HAS_STORE_V2 stays undefined here, so ProcessGroupGloo.hpp declares only these
// overrides. If a libtorch upgrade makes the header need more, compiling fails (an `override`
// without a base): nothing can link against a wrong declaration.
#ifdef GLOO_STORE_HAS_STORE_V2
#error "peftkit's gloo declarations do not provide the store v2 interface"
#endif

// The interface c10d's `ProcessGroupGloo::GlooStore` overrides (its inline methods are never
// instantiated here: peftkit hands c10d a `c10d::Store` and libtorch wraps it itself).
class Store {
 public:
  virtual ~Store() = default;
  virtual void set(const std::string& key, const std::vector<char>& data) = 0;
  virtual std::vector<char> get(const std::string& key) = 0;
  virtual void wait(const std::vector<std::string>& keys) = 0;
  virtual void wait(const std::vector<std::string>& keys,
                    const std::chrono::milliseconds& timeout) = 0;
};

}  // namespace rendezvous
}  // namespace gloo
