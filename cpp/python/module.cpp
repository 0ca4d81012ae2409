// tandem._core: Python bindings of the public C++ API (include/tandem/*.hpp only).
// The GIL is released while C++ runs (prefill, step, run).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings.hpp"
#include "tandem/manifest.hpp"
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
  d["drafter_calls"] = s.drafter_calls;
  d["drafted"] = s.drafted;
  d["accepted"] = s.accepted;
  d["accepted_histogram"] = s.accepted_histogram;
  d["acceptance_rate"] = s.acceptance_rate();
  d["time_to_first_token"] = s.time_to_first_token;
  d["total_time"] = s.total_time;
  d["ort_time"] = s.ort_time;
  d["large_time"] = s.large_time;
  d["drafter_time"] = s.drafter_time;
  d["draft_cost"] = s.draft_cost;
  d["verify_cost"] = s.verify_cost;
  d["loop_time"] = s.loop_time();
  d["tokens_per_second"] = s.tokens_per_second();
  return d;
}

bool IsProperty(py::handle h) { return PyObject_TypeCheck(h.ptr(), &PyProperty_Type) != 0; }

// GenerateOptions(**kwargs): each keyword is set as the attribute of the same name, so the
// fields are listed once (the def_readwrite calls below). None leaves an option at its
// default; an unknown name or a value of the wrong type is an InvalidArgumentError.
GenerateOptions OptionsFromKwargs(const py::kwargs& kwargs) {
  py::object self = py::cast(GenerateOptions{});
  py::object cls = py::type::of(self);
  for (const auto& [key, value] : kwargs) {
    const std::string name = py::str(key);
    if (value.is_none()) continue;
    if (name.rfind("_", 0) == 0 || !py::hasattr(cls, name.c_str()) ||
        !IsProperty(cls.attr(name.c_str()))) {
      std::string known;
      for (const auto& entry : cls.attr("__dict__").cast<py::dict>())
        if (IsProperty(entry.second)) known += (known.empty() ? "" : ", ") + py::str(entry.first).cast<std::string>();
      throw Error(ErrorCode::kInvalidArgument, "unknown generation option '" + name + "' (the options are " + known + ")");
    }
    try {
      self.attr(name.c_str()) = value;
    } catch (py::error_already_set& e) {
      if (!e.matches(PyExc_TypeError)) throw;
      const std::string doc = py::str(cls.attr(name.c_str()).attr("__doc__"));
      throw Error(ErrorCode::kInvalidArgument, name + "=" + py::repr(value).cast<std::string>() +
                                                   " is not a value of this option (" + doc + "; ints are 32-bit)");
    }
  }
  return self.cast<GenerateOptions>();
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
  m.def("check_threads", &CheckThreads, py::arg("name"), py::arg("value"), py::arg("zero_means"),
        "InvalidArgumentError unless 0 <= value <= max_threads(), naming the option `name`");

  // Every field of tandem::GenerateOptions, under its C++ name (docs: tandem.hpp).
  py::class_<GenerateOptions>(m, "GenerateOptions",
                              "Generation options (tandem::GenerateOptions): GenerateOptions(mode='speed', ...)")
      .def(py::init(&OptionsFromKwargs))
      .def_property(
          "mode", [](const GenerateOptions& o) { return std::string(ToString(o.mode)); },
          [](GenerateOptions& o, const std::string& name) { o.mode = ParseMode(name); },
          "str: 'large' | 'tandem' | 'speed' | 'vanilla'")
      .def_readwrite("block_length", &GenerateOptions::block_length,
                     "int: γ, in [1, the bundle's max_block_length]; 0: the bundle's default")
      .def_readwrite("adaptive", &GenerateOptions::adaptive,
                     "bool: speed/vanilla: the router ends each draft early (drafts up to max_block_length)")
      .def_readwrite("router_threshold", &GenerateOptions::router_threshold,
                     "float: τ, the router score below which adaptive drafting stops; < 0: the bundle's default")
      .def_readwrite("draft_cost", &GenerateOptions::draft_cost,
                     "float: adaptive: c, one drafter call in M_L steps; < 0: measured (Model.decode_costs)")
      .def_readwrite("verify_cost", &GenerateOptions::verify_cost,
                     "float: adaptive: β, each further token of an M_L call in M_L steps; < 0: measured")
      .def_readwrite("min_block_length", &GenerateOptions::min_block_length,
                     "int >= 0: adaptive: always draft at least this many")
      .def_readwrite("max_block_length", &GenerateOptions::max_block_length,
                     "int: adaptive: draft at most this many, up to the bundle's max_block_length; 0: speed: the "
                     "tandem drafter's trained γ (if recorded), else that maximum")
      .def_readwrite("max_new_tokens", &GenerateOptions::max_new_tokens, "int >= 0: the most tokens to generate")
      .def_readwrite("do_sample", &GenerateOptions::do_sample, "bool: sample (True) or greedy (False)")
      .def_readwrite("temperature", &GenerateOptions::temperature, "float > 0: used when do_sample")
      .def_readwrite("top_k", &GenerateOptions::top_k, "int >= 0: keep the k likeliest tokens; 0: off")
      .def_readwrite("top_p", &GenerateOptions::top_p, "float in (0, 1]: nucleus sampling; 1: off")
      .def_readwrite("seed", &GenerateOptions::seed, "int in [0, 2**64): the sampling RNG seed")
      .def_readwrite("eos_token_ids", &GenerateOptions::eos_token_ids,
                     "list[int]: token ids that end generation; empty: the bundle's EOS ids")
      .def_readwrite("ignore_eos", &GenerateOptions::ignore_eos, "bool: never stop at EOS")
      .def("resolve", &Resolve, py::arg("bundle"),
           "These options checked (InvalidArgumentError otherwise), with the bundle's values filled in")
      .def("__repr__", [](const GenerateOptions& o) {
        py::object self = py::cast(o);
        std::string out = "GenerateOptions(";
        for (const auto& entry : py::type::of(self).attr("__dict__").cast<py::dict>())
          if (IsProperty(entry.second)) {
            const std::string name = py::str(entry.first);
            out += (out.back() == '(' ? "" : ", ") + name + "=" + py::repr(self.attr(name.c_str())).cast<std::string>();
          }
        return out + ")";
      });

  py::class_<BundleDefaults>(m, "BundleDefaults",
                             "A bundle's default γ, longest γ, default τ and its tandem drafter's trained γ")
      .def(py::init([](int block_length, int max_block_length, float router_threshold, int trained_block_length) {
             return BundleDefaults{block_length, max_block_length, router_threshold, trained_block_length};
           }),
           py::kw_only(), py::arg("block_length"), py::arg("max_block_length"), py::arg("router_threshold"),
           py::arg("trained_block_length") = 0)
      .def_readonly("block_length", &BundleDefaults::block_length)
      .def_readonly("max_block_length", &BundleDefaults::max_block_length)
      .def_readonly("router_threshold", &BundleDefaults::router_threshold)
      .def_readonly("trained_block_length", &BundleDefaults::trained_block_length);

  // The manifest as the C++ reader read and checked it (paths absolute): Python's only reader.
  py::class_<GraphSpec>(m, "GraphSpec", "One graph of a bundle (tandem::GraphSpec; docs/CONTRACTS.md)")
      .def_readonly("role", &GraphSpec::role).def_readonly("file", &GraphSpec::file)
      .def_readonly("num_layers", &GraphSpec::num_layers).def_readonly("num_kv_heads", &GraphSpec::num_kv_heads)
      .def_readonly("head_dim", &GraphSpec::head_dim).def_readonly("hidden_size", &GraphSpec::hidden_size)
      .def_readonly("vocab_size", &GraphSpec::vocab_size).def_readonly("input_ids", &GraphSpec::input_ids)
      .def_readonly("logits", &GraphSpec::logits).def_readonly("seqlens_k", &GraphSpec::seqlens_k)
      .def_readonly("total_sequence_length", &GraphSpec::total_sequence_length)
      .def_readonly("logits_from", &GraphSpec::logits_from).def_readonly("past_keys", &GraphSpec::past_keys)
      .def_readonly("past_values", &GraphSpec::past_values).def_readonly("present_keys", &GraphSpec::present_keys)
      .def_readonly("present_values", &GraphSpec::present_values)
      .def_readonly("rep_layers", &GraphSpec::rep_layers).def_readonly("reps", &GraphSpec::reps)
      .def_readonly("memory_layers", &GraphSpec::memory_layers).def_readonly("memory", &GraphSpec::memory)
      .def_readonly("memory_size", &GraphSpec::memory_size)
      .def_readonly("router_score_greedy", &GraphSpec::router_score_greedy)
      .def_readonly("router_score_sampled", &GraphSpec::router_score_sampled)
      .def_readonly("kv_dtype", &GraphSpec::kv_dtype).def_readonly("precision", &GraphSpec::precision)
      .def_readonly("kv_scratch_rows", &GraphSpec::kv_scratch_rows)
      .def_readonly("draft_vocab", &GraphSpec::draft_vocab)
      .def_readonly("trained_block_length", &GraphSpec::trained_block_length)
      .def_property_readonly("logits_size", &GraphSpec::logits_size);

  py::class_<Manifest>(m, "Manifest", "A bundle's tandem.json, read and checked (tandem::Manifest)")
      .def_readonly("folder", &Manifest::folder).def_readonly("vocab_size", &Manifest::vocab_size)
      .def_readonly("context_length", &Manifest::context_length)
      .def_readonly("eos_token_ids", &Manifest::eos_token_ids).def_readonly("bos_token_id", &Manifest::bos_token_id)
      .def_readonly("pad_token_id", &Manifest::pad_token_id).def_readonly("tokenizer", &Manifest::tokenizer)
      .def_readonly("chat_template", &Manifest::chat_template)
      .def_readonly("special_tokens", &Manifest::special_tokens)
      .def_readonly("default_block_length", &Manifest::default_block_length)
      .def_readonly("max_block_length", &Manifest::max_block_length)
      .def_readonly("router_threshold", &Manifest::router_threshold).def_readonly("precision", &Manifest::precision)
      .def_property_readonly(
          "graphs",
          [](const Manifest& self) {
            py::dict out;
            for (const GraphSpec* g : self.graphs()) out[py::str(g->role)] = *g;
            return out;
          },
          "{role: GraphSpec} of the graphs the bundle has (large first)");

  m.def("read_manifest", &ReadManifest, py::arg("folder"), py::call_guard<py::gil_scoped_release>(),
        "Read and check <folder>/tandem.json (BundleError when it is not a bundle this runtime reads)");
  m.def("manifest_keys", [] {
    py::dict out;
    for (const ManifestKey& k : ManifestKeys()) {
      if (!out.contains(k.object)) out[k.object] = py::dict();
      out[k.object].cast<py::dict>()[k.name] = k.read;
    }
    return out;
  }, "{object: {key: read}}: every key of tandem.json the reader knows; it requires those it reads");
  m.attr("MANIFEST_FORMAT_VERSION") = kManifestFormatVersion;

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
      .def_property_readonly("manifest", &Model::manifest, py::return_value_policy::reference_internal)
      .def_property_readonly("bundle_path", &Model::bundle_path)
      .def_property_readonly("shared_weight_bytes", &Model::shared_weight_bytes)
      .def_property_readonly("vocab_size", &Model::vocab_size)
      .def_property_readonly("context_length", &Model::context_length)
      .def_property_readonly("defaults", &Model::defaults)
      .def("resolve", [](const Model& self, const GenerateOptions& o) { return Resolve(o, self.defaults()); },
           "The options as a Generator of this model runs them: checked, bundle defaults filled in")
      .def_property_readonly("has_tandem_drafter", &Model::has_tandem_drafter)
      .def_property_readonly("has_plain_drafter", &Model::has_plain_drafter)
      .def("has_router", [](const Model& self, const std::string& mode) { return self.has_router(ParseMode(mode)); })
      .def(
          "decode_costs",
          [](const Model& self, const std::string& mode) {
            const Mode parsed = ParseMode(mode);
            py::gil_scoped_release release;
            const DecodeCosts c = self.decode_costs(parsed);
            return std::make_pair(c.draft, c.verify);
          },
          py::arg("mode"),
          "(c, β): one drafter call and each further verified token, in M_L steps, measured on first use "
          "for `mode`'s drafter; adaptive requests with draft_cost / verify_cost < 0 use them")
      .def_property_readonly("eos_token_ids", &Model::eos_token_ids)
      .def_property_readonly("tokenizer_path", &Model::tokenizer_path);

  py::class_<Generator>(m, "Generator")
      .def(py::init([](std::shared_ptr<Model> model, const std::vector<int64_t>& prompt, const GenerateOptions& o) {
             py::gil_scoped_release release;
             return std::make_unique<Generator>(model, prompt, o);
           }),
           py::arg("model"), py::arg("prompt"), py::arg("options") = GenerateOptions{},
           "Runs the prefill; then step() / run() decode")
      .def("step", &Generator::Step, py::call_guard<py::gil_scoped_release>(),
           "Run one round; returns the tokens it emitted (empty once done)")
      .def("run", &Generator::Run, py::call_guard<py::gil_scoped_release>(), "Run to the end; returns all tokens")
      .def_property_readonly("done", &Generator::done)
      .def_property_readonly("finish_reason", [](const Generator& g) { return std::string(ToString(g.finish_reason())); })
      .def_property_readonly("tokens", &Generator::tokens)
      .def_property_readonly("stats", [](const Generator& g) { return StatsDict(g.stats()); });
}
