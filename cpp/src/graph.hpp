// One ONNX graph of a bundle: its session with checked I/O, and one call of it (RunGraph).
#pragma once

#include <onnxruntime_cxx_api.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "external_data.hpp"
#include "tandem/manifest.hpp"

namespace tandem::detail {

class KvCache;

// A graph's session. Immutable after construction; Ort::Session::Run is thread-safe, so one
// Graph serves every Generator of a Model. With `shared`, the session reads the shared
// initializers and prepacked weights it holds (it must outlive the Graph).
class Graph {
 public:
  Graph(const GraphSpec& spec, Ort::Env& env, const Ort::SessionOptions& options,
        SharedWeights* shared = nullptr);
  const GraphSpec& spec() const { return spec_; }
  Ort::Session& session() const { return *session_; }

 private:
  void CheckIo() const;
  GraphSpec spec_;
  std::unique_ptr<Ort::Session> session_;
};

// Buffers of one graph call. All pointers are caller-owned and outlive the call.
struct RunArgs {
  const int64_t* ids = nullptr;  // [1, t]
  int64_t num_ids = 0;
  std::vector<const float*> memory;  // tandem drafter: one [1, m, d_L] block per memory input
  int64_t memory_rows = 0;           // m
  int64_t logits_from = 0;           // logits rows are ids [logits_from, t)
  float* logits = nullptr;           // [1, t - logits_from, V] out
  std::vector<float*> reps;          // large: one [1, t, d_L] per reps output
  float* router = nullptr;           // [1, t - logits_from] out, or nullptr to skip: the score of
  bool sampled_router = false;       // the sampled router (true) or the greedy one (false)
};

// CPU memory info, and a tensor over caller-owned memory of `shape` (no copy).
const Ort::MemoryInfo& CpuMemory();
template <typename T>
Ort::Value Tensor(T* p, const std::vector<int64_t>& shape) {
  size_t n = 1;
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  return Ort::Value::CreateTensor<T>(CpuMemory(), p, n, shape.data(), shape.size());
}

// Binds the per-call inputs/outputs to the caller's buffers and runs the graph. On return
// the cache holds length + memory_rows + num_ids rows. Returns seconds spent in Run.
double RunGraph(const Graph& graph, KvCache& cache, const RunArgs& args);

}  // namespace tandem::detail
