// One ONNX graph of a bundle (session + checked I/O), its KV cache, and one Run.
#pragma once

#include <onnxruntime_cxx_api.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "bundle.hpp"

namespace tandem::detail {

// A graph's session. Immutable after construction; Ort::Session::Run is thread-safe, so one
// Graph serves every Generator of a Model.
class Graph {
 public:
  Graph(const GraphSpec& spec, Ort::Env& env, const Ort::SessionOptions& options);
  const GraphSpec& spec() const { return spec_; }
  Ort::Session& session() const { return *session_; }

 private:
  void CheckIo() const;
  GraphSpec spec_;
  std::unique_ptr<Ort::Session> session_;
};

// Preallocated KV cache of one graph for one request.
//
// Invariant: for every layer, buffer `cur_` holds K and V as contiguous [h, length_, dh]
// (exactly the `[1, h, P, dh]` past tensor the graph reads). A run writes the present
// `[1, h, P + n, dh]` into the other buffer; Commit swaps them. So no KV copy happens
// outside the graph's own concat, and RewindTo is a per-head memmove inside one buffer.
class KvCache {
 public:
  KvCache(int layers, int heads, int head_dim, int64_t capacity);
  int64_t length() const { return length_; }
  int64_t capacity() const { return capacity_; }
  float* past(int layer, int kv) { return buffers_[cur_][2 * layer + kv].data(); }
  float* present(int layer, int kv) { return buffers_[cur_ ^ 1][2 * layer + kv].data(); }
  // The last run wrote `new_length` positions into the present buffers.
  void Commit(int64_t new_length);
  // Keeps positions [0, n) and drops [n, length). n <= length.
  void RewindTo(int64_t n);
  const std::vector<int64_t>& past_shape();     // {1, h, length, dh}
  std::vector<int64_t> present_shape(int64_t new_positions) const;

 private:
  int layers_, heads_, head_dim_;
  int64_t capacity_, length_ = 0;
  int cur_ = 0;
  std::vector<std::vector<float>> buffers_[2];  // [2 * layer + kv] -> h * capacity * dh
  std::vector<int64_t> past_shape_;
};

// Buffers of one graph call. All pointers are caller-owned and outlive the call.
struct RunArgs {
  const int64_t* ids = nullptr;  // [1, t]
  int64_t num_ids = 0;
  std::vector<const float*> memory;  // small: one [1, m, d_L] block per memory input
  int64_t memory_rows = 0;           // m
  float* logits = nullptr;           // [1, t, V] out
  std::vector<float*> reps;          // large: one [1, t, d_L] per reps output
  float* router = nullptr;           // [1, t] out, or nullptr to skip
};

// Binds the inputs/outputs to the caller's buffers and runs the graph. On return the
// cache holds length + memory_rows + num_ids positions. Returns seconds spent in Run.
double RunGraph(const Graph& graph, Ort::IoBinding& binding, KvCache& cache, const RunArgs& args);

KvCache MakeCache(const GraphSpec& spec, int64_t capacity);

}  // namespace tandem::detail
