// C++ unit tests of the pieces below the loop: sampling, manifest checks, library loading
// and the C API's error path. Run by ctest (and under ASan/UBSan by `make sanitize`). The
// loop and its KV caches are tested from Python against the PyTorch reference, and under
// the sanitizers through the example and concurrency programs on a real bundle.
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "check.hpp"
#include "c_options.hpp"
#include "graph.hpp"
#include "sampling.hpp"
#include "tandem/tandem.hpp"
#include "tandem/tandem_c.h"

namespace fs = std::filesystem;
using namespace tandem;
using tandem_test::CheckThrows;
using namespace tandem::detail;

namespace {

#define CHECK_NEAR(a, b, tol) CHECK(std::fabs((a) - (b)) <= (tol))

void TestArgmax() {
  const float a[] = {0.1f, 3.0f, 3.0f, -1.0f};
  CHECK(Argmax(a, 4) == 1);  // first maximum
  const float b[] = {-5.0f};
  CHECK(Argmax(b, 1) == 0);
}

void TestProcessLogits() {
  struct Case {
    std::vector<float> logits;
    SamplingParams params;
    std::vector<float> expected;
  };
  const float e = std::exp(1.0f);
  std::vector<Case> cases = {
      {{0.0f, 0.0f}, {true, 1.0f, 0, 1.0f}, {0.5f, 0.5f}},
      {{1.0f, 0.0f}, {true, 1.0f, 0, 1.0f}, {e / (e + 1), 1 / (e + 1)}},
      {{2.0f, 0.0f}, {true, 2.0f, 0, 1.0f}, {e / (e + 1), 1 / (e + 1)}},     // temperature
      {{3.0f, 2.0f, 1.0f}, {true, 1.0f, 1, 1.0f}, {1.0f, 0.0f, 0.0f}},       // top-k 1
      {{0.0f, 0.0f, -100.0f}, {true, 1.0f, 2, 1.0f}, {0.5f, 0.5f, 0.0f}},     // top-k 2
      {{std::log(0.6f), std::log(0.3f), std::log(0.1f)}, {true, 1.0f, 0, 0.5f}, {1.0f, 0.0f, 0.0f}},  // top-p
      {{std::log(0.6f), std::log(0.3f), std::log(0.1f)}, {true, 1.0f, 0, 0.85f}, {2.0f / 3, 1.0f / 3, 0.0f}},
      {{std::log(0.6f), std::log(0.3f), std::log(0.1f)}, {true, 1.0f, 0, 0.9f}, {2.0f / 3, 1.0f / 3, 0.0f}},
  };
  std::vector<float> probs;
  for (const Case& c : cases) {
    ProcessLogits(c.logits.data(), static_cast<int64_t>(c.logits.size()), c.params, probs);
    for (size_t i = 0; i < c.expected.size(); ++i) CHECK_NEAR(probs[i], c.expected[i], 1e-5f);
  }
}

void TestSampling() {
  Rng rng(7);
  const float p[] = {0.0f, 0.25f, 0.75f};
  int counts[3] = {0, 0, 0};
  for (int i = 0; i < 20000; ++i) ++counts[SampleFrom(p, 3, rng)];
  CHECK(counts[0] == 0);
  CHECK_NEAR(counts[1] / 20000.0, 0.25, 0.02);
  // acceptance: p(d)=0.2, q(d)=0.8 -> accept with probability 0.25
  const float pp[] = {0.2f, 0.8f}, qq[] = {0.8f, 0.2f};
  int accepted = 0;
  for (int i = 0; i < 20000; ++i) accepted += AcceptDraft(pp, qq, 0, rng);
  CHECK_NEAR(accepted / 20000.0, 0.25, 0.02);
  for (int i = 0; i < 100; ++i) CHECK(AcceptDraft(pp, qq, 1, rng));  // p >= q: always
  // residual norm(max(0, p - q)) = token 1 only
  for (int i = 0; i < 100; ++i) CHECK(SampleResidual(pp, qq, 2, rng) == 1);
  // p == q: residual empty, falls back to p
  int ones = 0;
  for (int i = 0; i < 1000; ++i) ones += SampleResidual(pp, pp, 2, rng) == 1;
  CHECK(ones > 700);
}

void WriteFile(const fs::path& p, const std::string& text) {
  std::ofstream(p) << text;
}

void TestManifest() {
  fs::path dir = fs::temp_directory_path() / ("tandem_unit_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  CheckThrows([&] { ReadManifest((dir / "missing").string()); }, ErrorCode::kBundle, "not found");
  CheckThrows([&] { ReadManifest(dir.string()); }, ErrorCode::kBundle, "no tandem.json");
  WriteFile(dir / "tandem.json", "{not json");
  CheckThrows([&] { ReadManifest(dir.string()); }, ErrorCode::kBundle, "not valid JSON");
  WriteFile(dir / "tandem.json", R"({"format": "tandem-bundle", "format_version": 99})");
  CheckThrows([&] { ReadManifest(dir.string()); }, ErrorCode::kBundle, "format_version 99");
  WriteFile(dir / "tandem.json", R"({"format": "tandem-bundle", "format_version": 4, "graphs": {}})");
  CheckThrows([&] { ReadManifest(dir.string()); }, ErrorCode::kBundle, "graphs.large is missing");
  auto graph = [](const std::string& file, const std::string& greedy = "", const std::string& sampled = "") {
    return std::string(R"({"file": ")") + file + R"(", "num_layers": 1, "num_kv_heads": 1, "head_dim": 4,
      "hidden_size": 4, "vocab_size": 8, "num_heads": 1, "input_ids": "input_ids", "logits": "logits",
      "seqlens_k": "s", "total_sequence_length": "t", "logits_from": "f", "past_keys": ["pk"],
      "past_values": ["pv"], "present_keys": ["k"], "present_values": ["v"], "rep_layers": [], "reps": [],
      "memory_layers": [], "memory": [], "memory_size": 0, "router_score_greedy": ")" + greedy +
           R"(", "router_score_sampled": ")" + sampled + R"(", "kv_dtype": "float32",
      "precision": "fp32", "kv_scratch_rows": 1, "draft_vocab": [], "trained_block_length": 0})";
  };
  auto manifest = [&](const std::string& file, const std::string& extra = R"("precision": "fp32")",
                      const std::string& drafter = "") {
    return R"({"format": "tandem-bundle", "format_version": 4, "vocab_size": 8, "context_length": 16,
      "eos_token_ids": [2], "bos_token_id": null, "pad_token_id": 0, "tokenizer": "", "chat_template": "",
      "special_tokens": {"eos_token": "</s>"}, "default_block_length": 2, "max_block_length": 4,
      "router_threshold": 0.5, "build": {}, "provenance": {}, "validation": {}, )" + extra +
           R"(, "graphs": {"large": )" + graph(file) + drafter + "}}";
  };
  WriteFile(dir / "tandem.json", R"({"format": "tandem-bundle", "format_version": 3, "graphs": {}})");
  CheckThrows([&] { ReadManifest(dir.string()); }, ErrorCode::kBundle, "format_version 3 is not supported");
  WriteFile(dir / "tandem.json", manifest("../outside.onnx"));
  WriteFile(dir.parent_path() / "outside.onnx", "x");
  CheckThrows([&] { ReadManifest(dir.string()); }, ErrorCode::kBundle, "outside the bundle");
  WriteFile(dir / "tandem.json", manifest("/etc/passwd"));
  CheckThrows([&] { ReadManifest(dir.string()); }, ErrorCode::kBundle, "relative");
  WriteFile(dir / "tandem.json", manifest("large.onnx"));
  CheckThrows([&] { ReadManifest(dir.string()); }, ErrorCode::kBundle, "missing from the bundle");
  WriteFile(dir / "large.onnx", "garbage");
  Manifest m = ReadManifest(dir.string());
  CHECK(m.large.num_layers == 1 && m.vocab_size == 8 && m.context_length == 16 && m.default_block_length == 2);
  CHECK(!m.bos_token_id && m.pad_token_id == 0 && m.special_tokens.at("eos_token") == "</s>");
  CHECK(m.router_threshold == 0.5f && m.graphs().size() == 1 && !m.tandem_drafter);
  // the routers: a drafter has both score outputs or neither, three distinct outputs; M_L none
  WriteFile(dir / "tandem.json", manifest("large.onnx", R"("precision": "fp32")",
                                          R"(, "plain_drafter": )" + graph("large.onnx", "rg", "rs")));
  m = ReadManifest(dir.string());
  CHECK(m.plain_drafter && m.plain_drafter->has_router() && m.plain_drafter->router_score(false) == "rg" &&
        m.plain_drafter->router_score(true) == "rs" && !m.large.has_router());
  const std::pair<std::string, std::string> bad_routers[] = {{"rg", ""}, {"", "rs"}, {"r", "r"}, {"logits", "rs"}};
  for (const auto& [greedy, sampled] : bad_routers) {
    WriteFile(dir / "tandem.json", manifest("large.onnx", R"("precision": "fp32")",
                                            R"(, "plain_drafter": )" + graph("large.onnx", greedy, sampled)));
    CheckThrows([&] { ReadManifest(dir.string()); }, ErrorCode::kBundle, "router");
  }
  WriteFile(dir / "tandem.json", R"({"format": "tandem-bundle", "format_version": 4, "vocab_size": 8,
      "context_length": 16, "eos_token_ids": [], "bos_token_id": null, "pad_token_id": null, "tokenizer": "",
      "chat_template": "", "special_tokens": {}, "default_block_length": 2, "max_block_length": 4,
      "router_threshold": 0.5, "precision": "fp32", "graphs": {"large": )" + graph("large.onnx", "rg", "rs") + "}}");
  CheckThrows([&] { ReadManifest(dir.string()); }, ErrorCode::kBundle, "M_L's graph has no routers");
  // every key the reader reads is required: the exporter writes them all (no defaults here)
  WriteFile(dir / "tandem.json", manifest("large.onnx", R"("unused": 1)"));
  CheckThrows([&] { ReadManifest(dir.string()); }, ErrorCode::kBundle, "missing key \"precision\"");
  size_t read = 0;
  for (const ManifestKey& k : ManifestKeys()) read += k.read;
  CHECK(read > 30 && read < ManifestKeys().size());
  // a corrupt graph is refused at load time, with a message naming the file
  WriteFile(dir / "tandem.json", manifest("large.onnx"));
  tandem::ModelOptions opt;
  opt.bundle_path = dir.string();
  CheckThrows([&] { Model::Load(opt); }, ErrorCode::kBundle, "corrupt");
  fs::remove(dir.parent_path() / "outside.onnx");
  fs::remove_all(dir);
}

void TestParseMode() {
  CHECK(ParseMode("speed") == Mode::kSpeed);
  CHECK(std::string(ToString(Mode::kVanilla)) == "vanilla");
  CheckThrows([] { ParseMode("fast"); }, ErrorCode::kInvalidArgument, "unknown mode");
}

void TestThreadCap() {
  const int cap = tandem::MaxThreads();
  CHECK(cap >= 64 && cap == tandem::MaxThreads());
  tandem::ModelOptions opt;
  opt.bundle_path = "/nonexistent/bundle";  // reaching the bundle would throw kBundle
  opt.intra_op_threads = 1000000;
  CheckThrows([&] { Model::Load(opt); }, ErrorCode::kInvalidArgument,
              "intra_op_threads=1000000 is above the cap of " + std::to_string(cap) + " threads");
  CheckThrows([&] { Model::Load(opt); }, ErrorCode::kInvalidArgument, "pass a count from 1 to");
  opt.intra_op_threads = cap;
  CheckThrows([&] { Model::Load(opt); }, ErrorCode::kBundle, "not found");
  opt.drafter_threads = cap + 1;
  CheckThrows([&] { Model::Load(opt); }, ErrorCode::kInvalidArgument, "drafter_threads=" + std::to_string(cap + 1));
  opt.drafter_threads = std::numeric_limits<int>::max();
  CheckThrows([&] { Model::Load(opt); }, ErrorCode::kInvalidArgument, "drafter_threads");
  opt.drafter_threads = cap;
  CheckThrows([&] { Model::Load(opt); }, ErrorCode::kBundle, "not found");
  opt.drafter_threads = -1;
  CheckThrows([&] { Model::Load(opt); }, ErrorCode::kInvalidArgument, "drafter_threads must be >= 0");
  // the one check every front end calls, with its own option name
  CheckThrows([&] { CheckThreads("--threads", cap + 1, "all cores"); }, ErrorCode::kInvalidArgument,
              "--threads=" + std::to_string(cap + 1) + " is above the cap of " + std::to_string(cap));
  CheckThrows([&] { CheckThreads("--threads", int64_t{1} << 40, "all cores"); }, ErrorCode::kInvalidArgument,
              "or 0 for all cores");
  CheckThreads("--threads", cap, "all cores");
  CheckThreads("--threads", 0, "all cores");
}

void TestCApiErrors() {
  tandem_model* model = reinterpret_cast<tandem_model*>(0x1);
  tandem_status st = tandem_model_load("/nonexistent/bundle", 1, nullptr, &model);
  CHECK(st == TANDEM_ERR_BUNDLE);
  CHECK(model == nullptr);
  CHECK(std::strstr(tandem_last_error(), "not found") != nullptr);
  CHECK(tandem_model_load(nullptr, 1, nullptr, &model) == TANDEM_ERR_INVALID_ARGUMENT);
  // a thread count above the cap is refused before the bundle is read or a thread started
  // (the bundle does not exist: reaching it would be kBundle); the cap itself passes
  CHECK(tandem_max_threads() == tandem::MaxThreads() && tandem_max_threads() >= 64);
  model = reinterpret_cast<tandem_model*>(0x1);
  CHECK(tandem_model_load("/nonexistent/bundle", 1000000, nullptr, &model) == TANDEM_ERR_INVALID_ARGUMENT);
  CHECK(model == nullptr);
  const std::string msg = tandem_last_error();
  CHECK(msg.find("intra_op_threads=1000000") != std::string::npos);
  CHECK(msg.find("cap of " + std::to_string(tandem_max_threads())) != std::string::npos);
  CHECK(tandem_model_load("/nonexistent/bundle", tandem_max_threads() + 1, nullptr, &model) ==
        TANDEM_ERR_INVALID_ARGUMENT);
  CHECK(tandem_model_load("/nonexistent/bundle", tandem_max_threads(), nullptr, &model) == TANDEM_ERR_BUNDLE);
  CHECK(tandem_model_load("/nonexistent/bundle", -1, nullptr, &model) == TANDEM_ERR_INVALID_ARGUMENT);
}

// Every field of tandem_generate_params reaches GenerateOptions; the defaults are C++'s; an
// app built against an older (smaller) struct gets the defaults of the fields it lacks.
void TestCParams() {
  tandem_generate_params p;
  std::memset(&p, 0xAB, sizeof(p));
  CHECK(tandem_generate_params_init(&p, sizeof(p)) == TANDEM_OK);
  const GenerateOptions d;
  const GenerateOptions from_defaults = tandem::detail::OptionsFromC(&p);
  CHECK(p.struct_size == sizeof(p) && std::string(p.mode) == ToString(d.mode));
  CHECK(from_defaults.mode == d.mode && from_defaults.block_length == d.block_length &&
        from_defaults.router_threshold == d.router_threshold && from_defaults.max_new_tokens == d.max_new_tokens &&
        from_defaults.top_p == d.top_p && from_defaults.temperature == d.temperature &&
        from_defaults.min_block_length == d.min_block_length && p.eos_token_ids == nullptr && p.n_eos_token_ids == 0);
  const int64_t eos[] = {5, 7};
  p.mode = "vanilla";
  p.block_length = 3;
  p.adaptive = 1;
  p.router_threshold = 0.25f;
  p.min_block_length = 2;
  p.max_block_length = 6;
  p.max_new_tokens = 9;
  p.do_sample = 1;
  p.temperature = 0.5f;
  p.top_k = 11;
  p.top_p = 0.75f;
  p.seed = 42;
  p.eos_token_ids = eos;
  p.n_eos_token_ids = 2;
  p.ignore_eos = 1;
  p.draft_cost = 0.125f;
  p.verify_cost = 0.5f;
  GenerateOptions o = tandem::detail::OptionsFromC(&p);
  CHECK(o.draft_cost == 0.125f && o.verify_cost == 0.5f);
  CHECK(o.mode == Mode::kVanilla && o.block_length == 3 && o.adaptive && o.router_threshold == 0.25f);
  CHECK(o.min_block_length == 2 && o.max_block_length == 6 && o.max_new_tokens == 9 && o.do_sample);
  CHECK(o.temperature == 0.5f && o.top_k == 11 && o.top_p == 0.75f && o.seed == 42 && o.ignore_eos);
  CHECK((o.eos_token_ids == std::vector<int64_t>{5, 7}));
  // built against a struct that ended before ignore_eos: that field keeps its default
  p.struct_size = offsetof(tandem_generate_params, ignore_eos);
  o = tandem::detail::OptionsFromC(&p);
  CHECK(!o.ignore_eos && o.eos_token_ids.size() == 2 && o.top_k == 11);
  CHECK(o.draft_cost == d.draft_cost && o.verify_cost == d.verify_cost);  // < 0: measured
  // sizes this library cannot read, and inconsistent EOS ids, are refused with a message
  p.struct_size = sizeof(p) + 8;
  CheckThrows([&] { tandem::detail::OptionsFromC(&p); }, ErrorCode::kInvalidArgument, "tandem_generate_params_init");
  p.struct_size = 0;
  CheckThrows([&] { tandem::detail::OptionsFromC(&p); }, ErrorCode::kInvalidArgument, "struct_size");
  p.struct_size = sizeof(p);
  p.eos_token_ids = nullptr;
  CheckThrows([&] { tandem::detail::OptionsFromC(&p); }, ErrorCode::kInvalidArgument, "n_eos_token_ids");
  p.n_eos_token_ids = 0;
  p.mode = "fast";
  CheckThrows([&] { tandem::detail::OptionsFromC(&p); }, ErrorCode::kInvalidArgument, "unknown mode");
  CHECK(tandem::detail::OptionsFromC(nullptr).max_new_tokens == d.max_new_tokens);
  CHECK(tandem_generate_params_init(&p, sizeof(p) + 1) == TANDEM_ERR_INVALID_ARGUMENT);
  CHECK(std::strstr(tandem_last_error(), "struct_size") != nullptr);
  CHECK(tandem_generate_params_init(nullptr, sizeof(p)) == TANDEM_ERR_INVALID_ARGUMENT);
  // a smaller (older) struct is filled only as far as it reaches
  unsigned char buffer[sizeof(tandem_generate_params) + 16];
  std::memset(buffer, 0xCD, sizeof(buffer));
  const size_t old_size = offsetof(tandem_generate_params, ignore_eos);
  CHECK(tandem_generate_params_init(reinterpret_cast<tandem_generate_params*>(buffer), old_size) == TANDEM_OK);
  bool untouched = true;
  for (size_t i = old_size; i < sizeof(buffer); ++i) untouched = untouched && buffer[i] == 0xCD;
  CHECK(untouched);
}

// Resolve: the one check of a request's options, and the bundle's values filled in.
void TestResolve() {
  const BundleDefaults bundle{4, 8, 0.6f};
  GenerateOptions o;
  GenerateOptions r = Resolve(o, bundle);
  CHECK(r.block_length == 4 && r.max_block_length == 8 && r.router_threshold == 0.6f);
  o.block_length = 8;
  o.router_threshold = 0.0f;
  r = Resolve(o, bundle);
  CHECK(r.block_length == 8 && r.router_threshold == 0.0f);
  // adaptive speed stops at the tandem drafter's trained γ unless told (not below min_block_length);
  // vanilla, and a bundle that does not record the γ, at the bundle's maximum
  const BundleDefaults trained{1, 8, 0.0f, 2};
  GenerateOptions a;
  a.mode = Mode::kSpeed;
  a.adaptive = true;
  CHECK(Resolve(a, trained).max_block_length == 2 && Resolve(a, bundle).max_block_length == 8);
  a.min_block_length = 3;
  CHECK(Resolve(a, trained).max_block_length == 3);
  a.max_block_length = 6;
  CHECK(Resolve(a, trained).max_block_length == 6);
  a = GenerateOptions{};
  a.mode = Mode::kVanilla;
  a.adaptive = true;
  CHECK(Resolve(a, trained).max_block_length == 8);
  auto refused = [&](const std::function<void(GenerateOptions&)>& change, const std::string& needle) {
    GenerateOptions bad;
    bad.mode = Mode::kSpeed;
    change(bad);
    CheckThrows([&] { Resolve(bad, bundle); }, ErrorCode::kInvalidArgument, needle);
  };
  refused([](GenerateOptions& x) { x.block_length = 9; }, "block_length must be in [1, 8]");
  refused([](GenerateOptions& x) { x.block_length = -1; }, "block_length");
  refused([](GenerateOptions& x) { x.max_new_tokens = -1; }, "max_new_tokens");
  refused([](GenerateOptions& x) { x.temperature = 0.0f; }, "temperature");
  refused([](GenerateOptions& x) { x.top_k = -1; }, "top_k");
  refused([](GenerateOptions& x) { x.top_p = 1.5f; }, "top_p");
  refused([](GenerateOptions& x) { x.adaptive = true; x.mode = Mode::kTandem; }, "speed and vanilla");
  refused([](GenerateOptions& x) { x.adaptive = true; x.min_block_length = -1; }, "min_block_length");
  refused([](GenerateOptions& x) { x.adaptive = true; x.draft_cost = std::nanf(""); }, "draft_cost");
  refused([](GenerateOptions& x) { x.adaptive = true; x.verify_cost = INFINITY; }, "verify_cost");
  refused([](GenerateOptions& x) { x.adaptive = true; x.max_block_length = 9; }, "max_block_length");
  refused([](GenerateOptions& x) { x.adaptive = true; x.min_block_length = 9; }, "must be >= min_block_length");
  refused([](GenerateOptions& x) { x.adaptive = true; x.router_threshold = std::nanf(""); }, "router_threshold");
}

}  // namespace

int main() {
  TestArgmax();
  TestProcessLogits();
  TestSampling();
  TestManifest();
  TestParseMode();
  TestThreadCap();
  TestCApiErrors();
  TestCParams();
  TestResolve();
  return tandem_test::Summary();
}
