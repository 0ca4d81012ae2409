#include "graph.hpp"

#include <chrono>
#include <cstring>
#include <map>
#include <set>

#include "tandem/tandem.hpp"

namespace tandem::detail {
namespace {

struct PortInfo {
  ONNXTensorElementDataType type;
  std::vector<int64_t> shape;  // -1 for symbolic dims
};

std::map<std::string, PortInfo> Ports(Ort::Session& s, bool inputs) {
  std::map<std::string, PortInfo> out;
  Ort::AllocatorWithDefaultOptions alloc;
  size_t n = inputs ? s.GetInputCount() : s.GetOutputCount();
  for (size_t i = 0; i < n; ++i) {
    auto name = inputs ? s.GetInputNameAllocated(i, alloc) : s.GetOutputNameAllocated(i, alloc);
    // Keep the TypeInfo alive: the tensor info is a view into it.
    Ort::TypeInfo info = inputs ? s.GetInputTypeInfo(i) : s.GetOutputTypeInfo(i);
    if (info.GetONNXType() != ONNX_TYPE_TENSOR) {
      out[name.get()] = {ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED, {}};
      continue;
    }
    auto tensor = info.GetTensorTypeAndShapeInfo();
    out[name.get()] = {tensor.GetElementType(), tensor.GetShape()};
  }
  return out;
}

}  // namespace

Graph::Graph(const GraphSpec& spec, Ort::Env& env, const Ort::SessionOptions& options) : spec_(spec) {
  try {
    session_ = std::make_unique<Ort::Session>(env, spec.file.c_str(), options);
  } catch (const Ort::Exception& e) {
    throw Error(ErrorCode::kBundle, "cannot load " + spec.file + " (" + e.what() +
                                        "); the file is truncated or corrupt: re-export the bundle");
  }
  CheckIo();
}

void Graph::CheckIo() const {
  const std::string where = spec_.file;
  auto inputs = Ports(*session_, true);
  auto outputs = Ports(*session_, false);
  auto expect = [&](const std::map<std::string, PortInfo>& ports, const std::string& name,
                    ONNXTensorElementDataType type, std::vector<int64_t> shape, const char* kind) {
    auto it = ports.find(name);
    if (it == ports.end())
      throw Error(ErrorCode::kBundle, where + " has no " + kind + " named \"" + name +
                                          "\" that tandem.json declares; re-export the bundle");
    if (it->second.type != type)
      throw Error(ErrorCode::kBundle, where + ": " + kind + " \"" + name + "\" has element type " +
                                          std::to_string(it->second.type) + ", expected " + std::to_string(type));
    const auto& got = it->second.shape;
    bool ok = got.size() == shape.size();
    for (size_t i = 0; ok && i < got.size(); ++i) ok = shape[i] < 0 || got[i] < 0 || got[i] == shape[i];
    if (!ok) throw Error(ErrorCode::kBundle, where + ": " + kind + " \"" + name + "\" has a shape that disagrees with tandem.json dims");
  };
  constexpr auto F32 = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  const int64_t h = spec_.num_kv_heads, dh = spec_.head_dim, V = spec_.vocab_size;
  std::set<std::string> declared_in{spec_.input_ids}, declared_out{spec_.logits};
  expect(inputs, spec_.input_ids, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, {1, -1}, "input");
  expect(outputs, spec_.logits, F32, {1, -1, V}, "output");
  for (int l = 0; l < spec_.num_layers; ++l) {
    for (const std::string* n : {&spec_.past_keys[l], &spec_.past_values[l]}) {
      expect(inputs, *n, F32, {1, h, -1, dh}, "input");
      declared_in.insert(*n);
    }
    for (const std::string* n : {&spec_.present_keys[l], &spec_.present_values[l]}) {
      expect(outputs, *n, F32, {1, h, -1, dh}, "output");
      declared_out.insert(*n);
    }
  }
  for (const std::string& n : spec_.memory) {
    expect(inputs, n, F32, {1, -1, spec_.memory_size}, "input");
    declared_in.insert(n);
  }
  for (const std::string& n : spec_.reps) {
    expect(outputs, n, F32, {1, -1, spec_.hidden_size}, "output");
    declared_out.insert(n);
  }
  if (!spec_.router_score.empty()) {
    expect(outputs, spec_.router_score, F32, {1, -1}, "output");
    declared_out.insert(spec_.router_score);
  }
  for (const auto& [name, _] : inputs)
    if (!declared_in.count(name))
      throw Error(ErrorCode::kBundle, where + " has an input \"" + name + "\" that tandem.json does not declare");
}

KvCache::KvCache(int layers, int heads, int head_dim, int64_t capacity)
    : layers_(layers), heads_(heads), head_dim_(head_dim), capacity_(capacity) {
  const size_t size = static_cast<size_t>(heads) * static_cast<size_t>(capacity) * static_cast<size_t>(head_dim);
  for (auto& buffers : buffers_) {
    buffers.resize(2 * static_cast<size_t>(layers));
    for (auto& b : buffers) b.assign(size, 0.0f);
  }
  past_shape_ = {1, heads_, 0, head_dim_};
}

void KvCache::Commit(int64_t new_length) {
  cur_ ^= 1;
  length_ = new_length;
}

void KvCache::RewindTo(int64_t n) {
  if (n < 0 || n > length_) throw Error(ErrorCode::kRuntime, "internal: KV rewind out of range");
  if (n == length_) return;
  const size_t row = static_cast<size_t>(head_dim_);
  for (auto& b : buffers_[cur_]) {
    // head hh moves from offset hh*length*dh to hh*n*dh; n < length, so increasing order is safe.
    for (int hh = 1; hh < heads_; ++hh)
      std::memmove(b.data() + hh * n * row, b.data() + hh * length_ * row, n * row * sizeof(float));
  }
  length_ = n;
}

const std::vector<int64_t>& KvCache::past_shape() {
  past_shape_[2] = length_;
  return past_shape_;
}

std::vector<int64_t> KvCache::present_shape(int64_t new_positions) const {
  return {1, heads_, length_ + new_positions, head_dim_};
}

KvCache MakeCache(const GraphSpec& spec, int64_t capacity) {
  return KvCache(spec.num_layers, spec.num_kv_heads, spec.head_dim, capacity);
}

double RunGraph(const Graph& graph, Ort::IoBinding& binding, KvCache& cache, const RunArgs& a) {
  const GraphSpec& s = graph.spec();
  const int64_t added = a.memory_rows + a.num_ids;
  if (cache.length() + added > cache.capacity())
    throw Error(ErrorCode::kRuntime, "internal: KV cache capacity exceeded");
  static const Ort::MemoryInfo mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  auto tensor = [&](float* p, const std::vector<int64_t>& shape) {
    size_t n = 1;
    for (int64_t d : shape) n *= static_cast<size_t>(d);
    return Ort::Value::CreateTensor<float>(mem, p, n, shape.data(), shape.size());
  };
  binding.ClearBoundInputs();
  binding.ClearBoundOutputs();
  const std::vector<int64_t> ids_shape{1, a.num_ids};
  binding.BindInput(s.input_ids.c_str(),
                    Ort::Value::CreateTensor<int64_t>(mem, const_cast<int64_t*>(a.ids), a.num_ids,
                                                      ids_shape.data(), ids_shape.size()));
  const std::vector<int64_t> mem_shape{1, a.memory_rows, s.memory_size};
  for (size_t i = 0; i < s.memory.size(); ++i)
    binding.BindInput(s.memory[i].c_str(), tensor(const_cast<float*>(a.memory[i]), mem_shape));
  const std::vector<int64_t> past_shape = cache.past_shape();
  const std::vector<int64_t> present_shape = cache.present_shape(added);
  for (int l = 0; l < s.num_layers; ++l) {
    binding.BindInput(s.past_keys[l].c_str(), tensor(cache.past(l, 0), past_shape));
    binding.BindInput(s.past_values[l].c_str(), tensor(cache.past(l, 1), past_shape));
    binding.BindOutput(s.present_keys[l].c_str(), tensor(cache.present(l, 0), present_shape));
    binding.BindOutput(s.present_values[l].c_str(), tensor(cache.present(l, 1), present_shape));
  }
  binding.BindOutput(s.logits.c_str(), tensor(a.logits, {1, a.num_ids, s.vocab_size}));
  for (size_t i = 0; i < a.reps.size(); ++i)
    binding.BindOutput(s.reps[i].c_str(), tensor(a.reps[i], {1, a.num_ids, s.hidden_size}));
  if (!s.router_score.empty()) {
    if (a.router) binding.BindOutput(s.router_score.c_str(), tensor(a.router, {1, a.num_ids}));
  }
  auto t0 = std::chrono::steady_clock::now();
  try {
    graph.session().Run(Ort::RunOptions{nullptr}, binding);
  } catch (const Ort::Exception& e) {
    throw Error(ErrorCode::kRuntime, "ONNX Runtime failed running " + s.file + ": " + e.what());
  }
  auto t1 = std::chrono::steady_clock::now();
  cache.Commit(cache.length() + added);
  return std::chrono::duration<double>(t1 - t0).count();
}

}  // namespace tandem::detail
