#include "error.h"

extern "C" {

// Frees an error message set by any `pk_` function.
void pk_free_error(char* error) { std::free(error); }

}  // extern "C"
