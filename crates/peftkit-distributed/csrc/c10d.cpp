// libtorch's c10d from C: a TCPStore rendezvous, a prefix view of it, and a Gloo process group
// with the collectives training needs. Every function catches C++ exceptions and returns them as
// a malloc'd message (free with `pkd_free`), so nothing unwinds into Rust.
#define USE_C10D_GLOO 1

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "common.h"

#include <cstdint>
#include <string>
#include <vector>


extern "C" {

void pkd_free(void* p) { std::free(p); }

// A TCPStore client of host:port, or its server when `is_server` (listening on `port`, 0 = any
// free port; `pkd_store_port` tells which). `world` < 0: the number of workers is not known.
pkd_store* pkd_store_tcp(const char* host, int port, int is_server, int64_t world,
                         int64_t timeout_ms, char** error) {
  pkd_store* out = nullptr;
  pkd::guarded(error, [&] {
    c10d::TCPStoreOptions o;
    o.port = static_cast<std::uint16_t>(port);
    o.isServer = is_server != 0;
    if (world >= 0) o.numWorkers = static_cast<std::size_t>(world);
    // The server does not wait for the workers here: the process group's own rendezvous does.
    o.waitWorkers = false;
    o.timeout = std::chrono::milliseconds(timeout_ms);
    o.multiTenant = false;
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), o);
    out = new pkd_store{store};
  });
  return out;
}

int pkd_store_port(pkd_store* s, int* port, char** error) {
  return pkd::guarded(error, [&] {
    auto* tcp = dynamic_cast<c10d::TCPStore*>(s->store.get());
    *port = tcp == nullptr ? -1 : static_cast<int>(tcp->getPort());
  });
}

// A view of `s` whose keys all start with `prefix`.
pkd_store* pkd_store_prefix(pkd_store* s, const char* prefix, char** error) {
  pkd_store* out = nullptr;
  pkd::guarded(error, [&] {
    out = new pkd_store{c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), s->store)};
  });
  return out;
}

void pkd_store_free(pkd_store* s) { delete s; }

int pkd_store_set(pkd_store* s, const char* key, const uint8_t* data, size_t len,
                  char** error) {
  return pkd::guarded(error, [&] {
    s->store->set(std::string(key), std::vector<uint8_t>(data, data + len));
  });
}

// Waits (up to the store's timeout) for `key` and returns its value (malloc'd; free with
// `pkd_free`).
int pkd_store_get(pkd_store* s, const char* key, uint8_t** data, size_t* len, char** error) {
  *data = nullptr;
  *len = 0;
  return pkd::guarded(error, [&] {
    auto v = s->store->get(std::string(key));
    *len = v.size();
    *data = static_cast<uint8_t*>(std::malloc(v.size() + 1));
    if (*data == nullptr) throw std::bad_alloc();
    if (!v.empty()) std::memcpy(*data, v.data(), v.size());
  });
}

int pkd_store_add(pkd_store* s, const char* key, int64_t delta, int64_t* value, char** error) {
  return pkd::guarded(error, [&] { *value = s->store->add(std::string(key), delta); });
}

int pkd_store_check(pkd_store* s, const char* key, int* present, char** error) {
  return pkd::guarded(error, [&] { *present = s->store->check({std::string(key)}) ? 1 : 0; });
}

int pkd_store_set_timeout(pkd_store* s, int64_t timeout_ms, char** error) {
  return pkd::guarded(error, [&] { s->store->setTimeout(std::chrono::milliseconds(timeout_ms)); });
}

// A Gloo process group over the store. `hostname` (may be null): the address this rank's Gloo
// device binds to; null or empty: libtorch's default (this machine's hostname, else loopback).
// `interfaces` (may be null): GLOO_SOCKET_IFNAME's comma-separated network interfaces.
pkd_group* pkd_group_gloo(pkd_store* s, int rank, int world, int64_t timeout_ms,
                          const char* hostname, const char* interfaces, char** error) {
  pkd_group* out = nullptr;
  pkd::guarded(error, [&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
    if (interfaces != nullptr && interfaces[0] != '\0') {
      std::string list(interfaces);
      size_t start = 0;
      while (start <= list.size()) {
        size_t end = list.find(',', start);
        if (end == std::string::npos) end = list.size();
        if (end > start) {
          opts->devices.push_back(
              c10d::ProcessGroupGloo::createDeviceForInterface(list.substr(start, end - start)));
        }
        start = end + 1;
      }
    } else if (hostname != nullptr && hostname[0] != '\0') {
      opts->devices.push_back(
          c10d::ProcessGroupGloo::createDeviceForHostname(std::string(hostname)));
    } else {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(s->store, rank, world, opts);
    out = new pkd_group{pg, timeout};
  });
  return out;
}

void pkd_group_free(pkd_group* g) { delete g; }

static void wait_for(const pkd_group* g, const c10::intrusive_ptr<c10d::Work>& work) {
  work->wait(g->timeout);
}

// In-place all-reduce of each of `n` tensors; `op`: 0 sum, 1 product, 2 min, 3 max, 4 average
// (where the backend has it). All are started before the first is waited for.
int pkd_group_allreduce(pkd_group* g, at::Tensor** tensors, size_t n, int op, char** error) {
  return pkd::guarded(error, [&] {
    c10d::AllreduceOptions o;
    switch (op) {
      case 0: o.reduceOp = c10d::ReduceOp::SUM; break;
      case 1: o.reduceOp = c10d::ReduceOp::PRODUCT; break;
      case 2: o.reduceOp = c10d::ReduceOp::MIN; break;
      case 3: o.reduceOp = c10d::ReduceOp::MAX; break;
      default: o.reduceOp = c10d::ReduceOp::AVG; break;
    }
    o.timeout = g->timeout;
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    works.reserve(n);
    std::exception_ptr start_error;
    for (size_t i = 0; i < n && !start_error; ++i) {
      std::vector<at::Tensor> one{*tensors[i]};
      try {
        works.push_back(g->backend->allreduce(one, o));
      } catch (...) {
        start_error = std::current_exception();
      }
    }
    if (start_error) {
      for (auto& w : works) {
        try {
          wait_for(g, w);
        } catch (...) {
        }
      }
      std::rethrow_exception(start_error);
    }
    // Every started bucket is waited for before an error is reported, so none still writes
    // into the caller's tensors afterwards.
    std::exception_ptr first;
    for (auto& w : works) {
      try {
        wait_for(g, w);
      } catch (...) {
        if (!first) first = std::current_exception();
      }
    }
    if (first) std::rethrow_exception(first);
  });
}

int pkd_group_broadcast(pkd_group* g, at::Tensor* t, int root, char** error) {
  return pkd::guarded(error, [&] {
    c10d::BroadcastOptions o;
    o.rootRank = root;
    o.timeout = g->timeout;
    std::vector<at::Tensor> one{*t};
    wait_for(g, g->backend->broadcast(one, o));
  });
}

// `out` (world × the size of `in`, along dim 0) receives every rank's `in`, in rank order.
int pkd_group_allgather(pkd_group* g, at::Tensor* out, at::Tensor* in, char** error) {
  return pkd::guarded(error, [&] {
    c10d::AllgatherOptions o;
    o.timeout = g->timeout;
    wait_for(g, g->backend->_allgather_base(*out, *in, o));
  });
}

int pkd_group_barrier(pkd_group* g, char** error) {
  return pkd::guarded(error, [&] {
    c10d::BarrierOptions o;
    o.timeout = g->timeout;
    wait_for(g, g->backend->barrier(o));
  });
}

}  // extern "C"
