// Graph: one bundle graph's ONNX Runtime session, its I/O checked against the manifest, and
// RunGraph, one call of it over a KvCache.
#include "graph.hpp"

#include <chrono>
#include <map>
#include <set>

#include "kv_cache.hpp"
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

Graph::Graph(const GraphSpec& spec, Ort::Env& env, const Ort::SessionOptions& options, SharedWeights* shared)
    : spec_(spec) {
  CheckExternalData(spec.file);
  if (shared && shared->container()) {
    try {
      Ort::SessionOptions own = options.Clone();
      if (shared->AddTo(spec.file, own) > 0) {
        session_ = std::make_unique<Ort::Session>(env, spec.file.c_str(), own, shared->container());
        shared->Loaded(spec.file);
      }
    } catch (const Ort::Exception&) {
      // ONNX Runtime refused the shared initializers (a kernel that cannot use shared
      // prepacked weights): the graph loads with its own copy below.
      session_.reset();
    }
  }
  try {
    if (!session_) session_ = std::make_unique<Ort::Session>(env, spec.file.c_str(), options);
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
  const auto kv = spec_.kv_fp16() ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 : F32;
  const int64_t h = spec_.num_kv_heads, dh = spec_.head_dim;
  std::set<std::string> declared_in{spec_.input_ids, spec_.seqlens_k, spec_.total_sequence_length, spec_.logits_from};
  expect(inputs, spec_.input_ids, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, {1, -1}, "input");
  expect(inputs, spec_.seqlens_k, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, {1}, "input");
  expect(inputs, spec_.total_sequence_length, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, {}, "input");
  expect(inputs, spec_.logits_from, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, {1}, "input");
  expect(outputs, spec_.logits, F32, {1, -1, spec_.logits_size()}, "output");
  for (int l = 0; l < spec_.num_layers; ++l) {
    for (const std::string* n : {&spec_.past_keys[l], &spec_.past_values[l]}) {
      expect(inputs, *n, kv, {1, h, -1, dh}, "input");
      declared_in.insert(*n);
    }
    for (const std::string* n : {&spec_.present_keys[l], &spec_.present_values[l]})
      expect(outputs, *n, kv, {1, h, -1, dh}, "output");
  }
  for (const std::string& n : spec_.memory) {
    expect(inputs, n, F32, {1, -1, spec_.memory_size}, "input");
    declared_in.insert(n);
  }
  for (const std::string& n : spec_.reps) expect(outputs, n, F32, {1, -1, spec_.hidden_size}, "output");
  if (spec_.has_router())
    for (const std::string* n : {&spec_.router_score_greedy, &spec_.router_score_sampled})
      expect(outputs, *n, F32, {1, -1}, "output");
  for (const auto& [name, _] : inputs)
    if (!declared_in.count(name))
      throw Error(ErrorCode::kBundle, where + " has an input \"" + name + "\" that tandem.json does not declare");
}

const Ort::MemoryInfo& CpuMemory() {
  static const Ort::MemoryInfo mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  return mem;
}

double RunGraph(const Graph& graph, KvCache& cache, const RunArgs& a) {
  const GraphSpec& s = graph.spec();
  if (a.logits_from < 0 || a.logits_from >= a.num_ids) throw Error(ErrorCode::kRuntime, "internal: logits rows out of range");
  cache.Prepare(a.memory_rows + a.num_ids, a.logits_from);
  Ort::IoBinding& binding = cache.binding();
  binding.BindInput(s.input_ids.c_str(), Tensor<int64_t>(const_cast<int64_t*>(a.ids), {1, a.num_ids}));
  for (size_t i = 0; i < s.memory.size(); ++i)
    binding.BindInput(s.memory[i].c_str(), Tensor<float>(const_cast<float*>(a.memory[i]), {1, a.memory_rows, s.memory_size}));
  const int64_t rows = a.num_ids - a.logits_from;
  binding.BindOutput(s.logits.c_str(), Tensor<float>(a.logits, {1, rows, s.logits_size()}));
  for (size_t i = 0; i < a.reps.size(); ++i)
    binding.BindOutput(s.reps[i].c_str(), Tensor<float>(a.reps[i], {1, a.num_ids, s.hidden_size}));
  if (s.has_router() && a.router)
    binding.BindOutput(s.router_score(a.sampled_router).c_str(), Tensor<float>(a.router, {1, rows}));
  auto t0 = std::chrono::steady_clock::now();
  try {
    graph.session().Run(Ort::RunOptions{nullptr}, binding);
  } catch (const Ort::Exception& e) {
    throw Error(ErrorCode::kRuntime, "ONNX Runtime failed running " + s.file + ": " + e.what());
  }
  auto t1 = std::chrono::steady_clock::now();
  cache.Commit(a.memory_rows + a.num_ids);
  return std::chrono::duration<double>(t1 - t0).count();
}

}  // namespace tandem::detail
