// Loading ONNX Runtime at run time (dlopen + OrtGetApiBase) and the process-wide Ort::Env.
#pragma once

#include <onnxruntime_cxx_api.h>

#include <string>

namespace tandem::detail {

// Loads libonnxruntime once per process (thread-safe) and initialises the C++ API.
// `library` may be empty: then $TANDEM_ORT_LIBRARY, the build-time default, and finally
// dlopen's own search ("libonnxruntime.so.1", "libonnxruntime.so") are tried.
// Throws tandem::Error(kUnavailable) naming every path it tried.
Ort::Env& OrtEnvironment(const std::string& library);

// Path of the library actually loaded ("" before the first successful load).
std::string LoadedOrtLibrary();

bool HasExecutionProvider(const std::string& name);

}  // namespace tandem::detail
