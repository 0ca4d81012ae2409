// KvCache: one graph's KV buffers for one request, bound once, rewound by length.
#include "kv_cache.hpp"

#include <memory>

#include "tandem/tandem.hpp"

namespace tandem::detail {

KvCache::KvCache(const Graph& graph, int64_t capacity) : capacity_(capacity), binding_(graph.session()) {
  const GraphSpec& s = graph.spec();
  const auto type = s.kv_fp16() ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  const size_t element = s.kv_fp16() ? 2 : 4;
  const int64_t rows = capacity + s.kv_scratch_rows;
  const std::vector<int64_t> shape{1, s.num_kv_heads, rows, s.head_dim};
  const size_t bytes = static_cast<size_t>(s.num_kv_heads) * static_cast<size_t>(rows) *
                       static_cast<size_t>(s.head_dim) * element;
  for (int l = 0; l < s.num_layers; ++l) {
    for (int kv = 0; kv < 2; ++kv) {
      // not zeroed: rows past `length` are never read, and untouched pages cost no memory
      buffers_.push_back(std::make_unique_for_overwrite<uint8_t[]>(bytes));
      values_.push_back(Ort::Value::CreateTensor(CpuMemory(), buffers_.back().get(), bytes, shape.data(),
                                                 shape.size(), type));
      const std::string& past = kv == 0 ? s.past_keys[l] : s.past_values[l];
      const std::string& present = kv == 0 ? s.present_keys[l] : s.present_values[l];
      binding_.BindInput(past.c_str(), values_.back());
      binding_.BindOutput(present.c_str(), values_.back());
    }
  }
  binding_.BindInput(s.seqlens_k.c_str(), Tensor<int32_t>(&seqlens_k_, {1}));
  binding_.BindInput(s.total_sequence_length.c_str(), Tensor<int32_t>(&total_, {}));
  binding_.BindInput(s.logits_from.c_str(), Tensor<int64_t>(&logits_from_, {1}));
}

void KvCache::Prepare(int64_t new_rows, int64_t logits_from) {
  if (new_rows < 1 || length_ + new_rows > capacity_)
    throw Error(ErrorCode::kRuntime, "internal: KV cache capacity exceeded");
  total_ = static_cast<int32_t>(length_ + new_rows);
  seqlens_k_ = total_ - 1;
  logits_from_ = logits_from;
}

void KvCache::RewindTo(int64_t n) {
  if (n < 0 || n > length_) throw Error(ErrorCode::kRuntime, "internal: KV rewind out of range");
  length_ = n;
}

}  // namespace tandem::detail
