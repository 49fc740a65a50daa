// Errors cross the C boundary as malloc'd strings, freed by `pk_free_error`.
#pragma once

#include <cstdlib>
#include <cstring>

namespace peftkit {

inline char* copy_message(const char* what) {
  size_t n = std::strlen(what);
  char* s = static_cast<char*>(std::malloc(n + 1));
  if (s != nullptr) std::memcpy(s, what, n + 1);
  return s;
}

}  // namespace peftkit
