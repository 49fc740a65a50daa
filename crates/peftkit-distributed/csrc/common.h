// What the C functions of this crate share: exceptions turned into malloc'd messages, and the
// handles Rust holds.
#pragma once

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>

namespace pkd {

inline char* copy_message(const char* what) {
  size_t n = std::strlen(what);
  char* s = static_cast<char*>(std::malloc(n + 1));
  if (s != nullptr) std::memcpy(s, what, n + 1);
  return s;
}

// Runs `f`, turning an exception into -1 and `*error`.
template <typename F>
int guarded(char** error, F&& f) {
  *error = nullptr;
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    *error = copy_message(e.what());
  } catch (...) {
    *error = copy_message("unknown C++ exception");
  }
  return -1;
}

}  // namespace pkd

struct pkd_store {
  c10::intrusive_ptr<c10d::Store> store;
};

struct pkd_group {
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
};
