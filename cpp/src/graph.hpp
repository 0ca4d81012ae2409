// One ONNX graph of a bundle (session + checked I/O), its KV cache, and one Run.
#pragma once

#include <onnxruntime_cxx_api.h>

#include <cstdint>
#include <cstring>
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

// The KV cache of one graph for one request, in ONNX Runtime GroupQueryAttention's shared
// buffer layout, and the IO binding that carries it.
//
// Invariant: for every layer, K and V are one buffer each, [1, h, capacity + scratch, dh]
// of the graph's kv dtype, bound once as both the past input and the present output; rows
// [0, length) are valid (the graph may write `kv_scratch_rows` rows past a call's rows). A call with n new rows is told seqlens_k = length + n - 1 and
// total_sequence_length = length + n, and writes rows [length, length + n) in place. So no
// KV byte is ever copied by us, and RewindTo only changes `length`.
class KvCache {
 public:
  KvCache(const Graph& graph, int64_t capacity);
  KvCache(const KvCache&) = delete;  // the binding points into this object
  KvCache& operator=(const KvCache&) = delete;
  int64_t length() const { return length_; }
  int64_t capacity() const { return capacity_; }
  Ort::IoBinding& binding() { return binding_; }
  // Sets the lengths the next call reads: n new rows after `length`, logits from row
  // `logits_from` of the call's tokens.
  void Prepare(int64_t new_rows, int64_t logits_from);
  // The last call wrote `new_rows` rows.
  void Commit(int64_t new_rows) { length_ += new_rows; }
  // Keeps rows [0, n) and drops [n, length). n <= length.
  void RewindTo(int64_t n);

 private:
  int64_t capacity_, length_ = 0;
  std::vector<std::unique_ptr<uint8_t[]>> buffers_;  // [2 * layer + kv] -> h * capacity * dh elements
  std::vector<Ort::Value> values_;                   // tensors over buffers_, bound in binding_
  int32_t seqlens_k_ = 0, total_ = 0;                // bound inputs, updated by Prepare
  int64_t logits_from_ = 0;
  Ort::IoBinding binding_;
};

// Buffers of one graph call. All pointers are caller-owned and outlive the call.
struct RunArgs {
  const int64_t* ids = nullptr;  // [1, t]
  int64_t num_ids = 0;
  std::vector<const float*> memory;  // small: one [1, m, d_L] block per memory input
  int64_t memory_rows = 0;           // m
  int64_t logits_from = 0;           // logits rows are ids [logits_from, t)
  float* logits = nullptr;           // [1, t - logits_from, V] out
  std::vector<float*> reps;          // large: one [1, t, d_L] per reps output
  float* router = nullptr;           // [1, t - logits_from] out, or nullptr to skip
};

// Binds the per-call inputs/outputs to the caller's buffers and runs the graph. On return
// the cache holds length + memory_rows + num_ids rows. Returns seconds spent in Run.
double RunGraph(const Graph& graph, KvCache& cache, const RunArgs& args);

}  // namespace tandem::detail
