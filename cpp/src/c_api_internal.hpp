// What the C API's translation units share (c_api.cpp, c_api_text.cpp): the handles'
// definitions, the calling thread's last error, and the guard that turns exceptions into a
// status.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "tandem/tandem.hpp"
#include "tandem/tandem_c.h"

struct tandem_model {
  std::shared_ptr<const tandem::Model> model;
};
struct tandem_generator {
  std::unique_ptr<tandem::Generator> gen;
  std::vector<int64_t> pending;  // tokens of a step that did not fit the caller's buffer
  std::atomic<bool> busy{false};  // guards `pending` as Generator guards itself
};

namespace tandem::capi {

// The message of the calling thread's last failed call.
inline thread_local std::string g_last_error;

template <typename F>
tandem_status Guard(F&& body) noexcept {
  try {
    g_last_error.clear();
    body();
    return TANDEM_OK;
  } catch (const tandem::Error& e) {
    g_last_error = e.what();
    return static_cast<tandem_status>(e.code());
  } catch (const std::exception& e) {
    g_last_error = e.what();
    return TANDEM_ERR_INTERNAL;
  } catch (...) {
    g_last_error = "unknown error";
    return TANDEM_ERR_INTERNAL;
  }
}

inline void Require(bool ok, const char* what) {
  if (!ok) throw tandem::Error(tandem::ErrorCode::kInvalidArgument, what);
}

}  // namespace tandem::capi
