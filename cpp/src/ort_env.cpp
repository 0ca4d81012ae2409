#include "ort_env.hpp"

#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <vector>

#include "tandem/tandem.hpp"

#ifndef TANDEM_DEFAULT_ORT_LIBRARY
#define TANDEM_DEFAULT_ORT_LIBRARY ""
#endif

namespace tandem::detail {
namespace {

struct Loaded {
  void* handle = nullptr;  // never dlclose'd: ORT must outlive every session
  std::string path;
  std::unique_ptr<Ort::Env> env;
};

std::mutex g_mutex;
Loaded g_loaded;

std::vector<std::string> Candidates(const std::string& library) {
  std::vector<std::string> out;
  if (!library.empty()) {
    out.push_back(library);
    return out;  // an explicit path is never silently replaced by another one
  }
  if (const char* env = std::getenv("TANDEM_ORT_LIBRARY"); env && *env) out.emplace_back(env);
  if (*TANDEM_DEFAULT_ORT_LIBRARY) out.emplace_back(TANDEM_DEFAULT_ORT_LIBRARY);
  out.emplace_back("libonnxruntime.so.1");
  out.emplace_back("libonnxruntime.so");
  return out;
}

}  // namespace

Ort::Env& OrtEnvironment(const std::string& library) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_loaded.env) {
    if (!library.empty() && library != g_loaded.path) {
      throw Error(ErrorCode::kUnavailable,
                  "ONNX Runtime is already loaded from " + g_loaded.path +
                      "; a process can load only one copy (asked for " + library + ")");
    }
    return *g_loaded.env;
  }
  std::string tried;
  for (const std::string& path : Candidates(library)) {
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
      const char* err = dlerror();
      tried += "\n  " + path + ": " + (err ? err : "not found");
      continue;
    }
    using GetApiBase = const OrtApiBase* (*)();
    auto get_base = reinterpret_cast<GetApiBase>(dlsym(handle, "OrtGetApiBase"));
    if (!get_base) {
      tried += "\n  " + path + ": no OrtGetApiBase symbol (not an ONNX Runtime library)";
      dlclose(handle);
      continue;
    }
    const OrtApi* api = get_base()->GetApi(ORT_API_VERSION);
    if (!api) {
      tried += "\n  " + path + ": too old for API version " + std::to_string(ORT_API_VERSION) +
               " (library reports " + get_base()->GetVersionString() + ")";
      dlclose(handle);
      continue;
    }
    Ort::InitApi(api);
    g_loaded.handle = handle;
    g_loaded.path = path;
    try {
      g_loaded.env = std::make_unique<Ort::Env>(ORT_LOGGING_LEVEL_ERROR, "tandem");
    } catch (const Ort::Exception& e) {
      throw Error(ErrorCode::kUnavailable, std::string("ONNX Runtime environment: ") + e.what());
    }
    return *g_loaded.env;
  }
  throw Error(ErrorCode::kUnavailable,
              "could not load the ONNX Runtime library. Install the `onnxruntime` Python "
              "wheel, or set TANDEM_ORT_LIBRARY (or ModelOptions::ort_library) to "
              "libonnxruntime.so. Tried:" + tried);
}

std::string LoadedOrtLibrary() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_loaded.path;
}

bool HasExecutionProvider(const std::string& name) {
  std::vector<std::string> providers = Ort::GetAvailableProviders();
  return std::find(providers.begin(), providers.end(), name) != providers.end();
}

}  // namespace tandem::detail
