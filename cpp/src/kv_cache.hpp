// The KV cache of one graph for one request.
#pragma once

#include <onnxruntime_cxx_api.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "graph.hpp"

namespace tandem::detail {

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

}  // namespace tandem::detail
