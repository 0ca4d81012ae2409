// tandem._core: Python bindings of the public C++ API (include/tandem/tandem.hpp only).
// The GIL is released while C++ runs (prefill, step, run).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings.hpp"
#include "tandem/tandem.hpp"

namespace py = pybind11;
using namespace tandem;

namespace {

py::dict StatsDict(const Stats& s) {
  py::dict d;
  d["prompt_tokens"] = s.prompt_tokens;
  d["new_tokens"] = s.new_tokens;
  d["rounds"] = s.rounds;
  d["large_calls"] = s.large_calls;
  d["small_calls"] = s.small_calls;
  d["drafted"] = s.drafted;
  d["accepted"] = s.accepted;
  d["accepted_histogram"] = s.accepted_histogram;
  d["acceptance_rate"] = s.acceptance_rate();
  d["time_to_first_token"] = s.time_to_first_token;
  d["total_time"] = s.total_time;
  d["ort_time"] = s.ort_time;
  d["large_time"] = s.large_time;
  d["small_time"] = s.small_time;
  d["loop_time"] = s.loop_time();
  d["tokens_per_second"] = s.tokens_per_second();
  return d;
}

GenerateOptions MakeOptions(const std::string& mode, int block_length, bool adaptive, float router_threshold,
                            int min_block_length, int max_block_length, int max_new_tokens, bool do_sample,
                            float temperature, int top_k, float top_p, uint64_t seed,
                            const std::vector<int64_t>& eos_token_ids, bool ignore_eos) {
  GenerateOptions o;
  o.mode = ParseMode(mode);
  o.block_length = block_length;
  o.adaptive = adaptive;
  o.router_threshold = router_threshold;
  o.min_block_length = min_block_length;
  o.max_block_length = max_block_length;
  o.max_new_tokens = max_new_tokens;
  o.do_sample = do_sample;
  o.temperature = temperature;
  o.top_k = top_k;
  o.top_p = top_p;
  o.seed = seed;
  o.eos_token_ids = eos_token_ids;
  o.ignore_eos = ignore_eos;
  return o;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "tandem C++ core (ONNX Runtime loop); use the `tandem` package API instead";

  // tandem::Error -> the matching class of tandem.errors
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      const char* cls = "RuntimeBackendError";
      switch (e.code()) {
        case ErrorCode::kInvalidArgument: cls = "InvalidArgumentError"; break;
        case ErrorCode::kBundle: cls = "BundleError"; break;
        case ErrorCode::kBusy: cls = "BusyError"; break;
        case ErrorCode::kDeviceUnavailable: cls = "DeviceUnavailableError"; break;
        case ErrorCode::kUnavailable:
        case ErrorCode::kRuntime: cls = "RuntimeBackendError"; break;
      }
      py::object type = py::module_::import("tandem.errors").attr(cls);
      PyErr_SetString(type.ptr(), e.what());
    }
  });

  tandem::python::BindTokenizer(m);

  m.def("max_threads", &MaxThreads,
        "The most threads Model accepts for threads / drafter_threads on this machine");

  py::class_<Model, std::shared_ptr<Model>>(m, "Model")
      .def(py::init([](const std::string& bundle, const std::string& device, int threads,
                       const std::string& ort_library, int drafter_threads, bool share_weights) {
             ModelOptions o;
             o.bundle_path = bundle;
             if (device == "cuda") o.device = Device::kCuda;
             else if (device != "cpu") throw Error(ErrorCode::kInvalidArgument, "device must be \"cpu\" or \"cuda\", got \"" + device + "\"");
             o.intra_op_threads = threads;
             o.ort_library = ort_library;
             o.drafter_threads = drafter_threads;
             o.share_weights = share_weights;
             py::gil_scoped_release release;
             return std::const_pointer_cast<Model>(Model::Load(o));
           }),
           py::arg("bundle"), py::arg("device") = "cpu", py::arg("threads") = 0, py::arg("ort_library") = "",
           py::arg("drafter_threads") = 1, py::arg("share_weights") = true)
      .def_property_readonly("bundle_path", &Model::bundle_path)
      .def_property_readonly("shared_weight_bytes", &Model::shared_weight_bytes)
      .def_property_readonly("vocab_size", &Model::vocab_size)
      .def_property_readonly("context_length", &Model::context_length)
      .def_property_readonly("default_block_length", &Model::default_block_length)
      .def_property_readonly("max_block_length", &Model::max_block_length)
      .def_property_readonly("has_small", &Model::has_small)
      .def_property_readonly("has_draft", &Model::has_draft)
      .def("has_router", [](const Model& self, const std::string& mode) { return self.has_router(ParseMode(mode)); })
      .def_property_readonly("eos_token_ids", &Model::eos_token_ids)
      .def_property_readonly("tokenizer_path", &Model::tokenizer_path);

  py::class_<Generator>(m, "Generator")
      .def(py::init([](std::shared_ptr<Model> model, const std::vector<int64_t>& prompt, const std::string& mode,
                       int block_length, bool adaptive, float router_threshold, int min_block_length,
                       int max_block_length, int max_new_tokens, bool do_sample, float temperature, int top_k,
                       float top_p, uint64_t seed, const std::vector<int64_t>& eos_token_ids, bool ignore_eos) {
             GenerateOptions o = MakeOptions(mode, block_length, adaptive, router_threshold, min_block_length,
                                             max_block_length, max_new_tokens, do_sample, temperature, top_k,
                                             top_p, seed, eos_token_ids, ignore_eos);
             py::gil_scoped_release release;
             return std::make_unique<Generator>(model, prompt, o);
           }),
           py::arg("model"), py::arg("prompt"), py::kw_only(), py::arg("mode") = "large", py::arg("block_length") = 0,
           py::arg("adaptive") = false, py::arg("router_threshold") = -1.0f, py::arg("min_block_length") = 1,
           py::arg("max_block_length") = 0, py::arg("max_new_tokens") = 128, py::arg("do_sample") = false,
           py::arg("temperature") = 1.0f, py::arg("top_k") = 0, py::arg("top_p") = 1.0f, py::arg("seed") = 0,
           py::arg("eos_token_ids") = std::vector<int64_t>{}, py::arg("ignore_eos") = false)
      .def("step", &Generator::Step, py::call_guard<py::gil_scoped_release>(),
           "Run one round; returns the tokens it emitted (empty once done)")
      .def("run", &Generator::Run, py::call_guard<py::gil_scoped_release>(), "Run to the end; returns all tokens")
      .def_property_readonly("done", &Generator::done)
      .def_property_readonly("finish_reason", [](const Generator& g) { return std::string(ToString(g.finish_reason())); })
      .def_property_readonly("tokens", &Generator::tokens)
      .def_property_readonly("stats", [](const Generator& g) { return StatsDict(g.stats()); });
}
