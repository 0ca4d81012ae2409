// External data of a bundle's graphs: the scanner that keeps every graph inside its bundle
// folder, and the tensors several graphs share (loaded once).
#pragma once

#include <onnxruntime_cxx_api.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

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

}  // namespace tandem::detail
