// peftkit: declarations only. See ../README.md.
#pragma once

#include <chrono>

namespace gloo {

// Named by an inline method of ProcessGroupGloo that peftkit never calls; declared so the header
// parses. Never defined, constructed or used here.
class Context {
 public:
  void setTimeout(std::chrono::milliseconds timeout);
};

}  // namespace gloo
