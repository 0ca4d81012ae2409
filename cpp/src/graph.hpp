// One ONNX graph of a bundle (session + checked I/O), its KV cache, and one Run.
#pragma once

#include <onnxruntime_cxx_api.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "tandem/manifest.hpp"

namespace tandem::detail {

// Refuses a graph file whose external data lies outside its folder, names a missing file, or
// reads past the end of its file (a tandem::Error(kBundle) naming both files).
void CheckExternalData(const std::string& graph_file);

// Tensors that several graphs of a model read from the same bytes of one data file (the
// exporter stores a tensor once per bundle and points the other graphs at it; see
// docs/GRAPHS.md): each is mapped once and given to every session that reads it as a shared
// initializer, and those sessions share one prepacked-weights container, so ONNX Runtime also
// prepacks it (MatMulNBits, MatMul) once. Must outlive every session created with it.
class SharedWeights {
 public:
  // Scans `graph_files` (each checked as CheckExternalData does). A tensor is shared when at
  // least two of them read the same (file, offset, length) with the same type and shape, and
  // its offset is page-aligned (the exporter aligns to 4 KiB); the others load as usual.
  explicit SharedWeights(const std::vector<std::string>& graph_files);
  ~SharedWeights();
  SharedWeights(const SharedWeights&) = delete;
  SharedWeights& operator=(const SharedWeights&) = delete;

  // Adds the shared initializers `graph_file` reads to `options`; returns how many.
  size_t AddTo(const std::string& graph_file, Ort::SessionOptions& options) const;
  // `graph_file`'s session was created with them.
  void Loaded(const std::string& graph_file);
  OrtPrepackedWeightsContainer* container() const { return container_.get(); }
  // Bytes of the tensors that two or more sessions were created with (each counted once).
  uint64_t bytes() const;
  // Drops the mapped pages from this process's resident set (call once the sessions exist:
  // prepacked weights no longer need them; anything read later is read back from the file).
  void ReleasePages() const noexcept;

 private:
  struct ContainerDeleter {
    void operator()(OrtPrepackedWeightsContainer* c) const noexcept;
  };
  struct Mapping {  // one read-only mmap of a tensor's bytes
    Mapping(void* a, size_t n) : address(a), size(n) {}
    ~Mapping();
    Mapping(const Mapping&) = delete;
    Mapping& operator=(const Mapping&) = delete;
    void* address;
    size_t size;
    int sessions = 0;  // sessions created with a tensor over it
  };
  std::vector<std::unique_ptr<Mapping>> maps_;
  std::vector<Ort::Value> values_;  // tensors over maps_ (one range may be seen with several shapes)
  std::vector<size_t> value_map_;   // per value: its maps_ index
  std::map<std::string, std::vector<std::pair<std::string, size_t>>> uses_;  // graph file -> (initializer, value)
  std::unique_ptr<OrtPrepackedWeightsContainer, ContainerDeleter> container_;
};

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
