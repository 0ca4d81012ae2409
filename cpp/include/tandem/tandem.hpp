// tandem: Tandem Transformers inference with ONNX Runtime.
//
// Public C++ API for applications that embed the runtime without Python.
//
//   auto model = tandem::Model::Load({.bundle_path = "bundles/default"});
//   tandem::GenerateOptions opt;
//   opt.mode = tandem::Mode::kSpeed;
//   tandem::Generator gen(model, prompt_ids, opt);
//   while (!gen.done()) for (int64_t tok : gen.Step()) { ... }
//
// Threading: a Model is immutable after Load and may be shared by any number of threads,
// each with its own Generator. A Generator must be used by one thread at a time; a
// concurrent call is refused with ErrorCode::kBusy (never undefined behaviour).
//
// Errors: every function here reports failure by throwing tandem::Error (derived from
// std::runtime_error) with a code and a message that says what to fix. Nothing else is
// thrown across this API. The C API in tandem_c.h never throws.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "tandem/manifest.hpp"

namespace tandem {

enum class ErrorCode {
  kInvalidArgument = 1,  // a parameter, prompt or token id is out of range
  kBundle = 2,           // bundle folder/manifest/graph missing, corrupt or inconsistent
  kUnavailable = 3,      // the ONNX Runtime library is missing or too old
  kBusy = 4,             // a Generator was used from two threads at once
  kRuntime = 5,          // ONNX Runtime failed while running a graph
  kDeviceUnavailable = 6,  // the requested execution provider (e.g. CUDA) is not available
};

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ErrorCode code() const noexcept { return code_; }

 private:
  ErrorCode code_;
};

// Decoding modes (docs/METHOD.md §2).
enum class Mode {
  kLarge,    // M_L alone, one token per step (baseline)
  kTandem,   // standalone Tandem: M_L's token + γ-1 tokens of the tandem drafter per block (lossy)
  kSpeed,    // speculative decoding with the tandem drafter (lossless)
  kVanilla,  // speculative decoding with the plain drafter (lossless)
};

enum class Device { kCpu, kCuda };

enum class FinishReason {
  kNotFinished,
  kEos,           // an EOS token was emitted (it is part of the output)
  kMaxNewTokens,  // max_new_tokens tokens were emitted
  kLength,        // prompt + output reached the context length
};

const char* ToString(Mode mode) noexcept;
const char* ToString(FinishReason reason) noexcept;
// Parses "large" | "tandem" | "speed" | "vanilla"; throws kInvalidArgument otherwise.
Mode ParseMode(const std::string& name);

// The most threads ModelOptions::intra_op_threads and drafter_threads may ask for on this
// machine: 4 per hardware thread, and never less than 64. Model::Load refuses a larger
// count with kInvalidArgument before it creates any ONNX Runtime session or thread pool.
int MaxThreads() noexcept;
// Throws kInvalidArgument unless 0 <= value <= MaxThreads(), naming the option `name` and
// what 0 means for it. Every front end checks its thread counts with it.
void CheckThreads(const std::string& name, int64_t value, const std::string& zero_means);

struct ModelOptions {
  std::string bundle_path;          // folder holding tandem.json
  Device device = Device::kCpu;     // kCuda needs an ONNX Runtime built with CUDA
  int intra_op_threads = 0;         // M_L's threads, in [0, MaxThreads()]; 0: ONNX Runtime's
                                    // default (one per core)
  int drafter_threads = 1;          // the drafter's threads, in [0, MaxThreads()]; 0: as
                                    // intra_op_threads
  std::string ort_library;          // libonnxruntime path; empty: $TANDEM_ORT_LIBRARY,
                                    // then the library found at build time, then dlopen's search
  bool share_weights = true;        // a tensor several graphs read from one data file (a drafter
                                    // with M_L's embedding and head) is loaded and prepacked once
                                    // (device kCpu; false: each graph loads its own copy)
};

// The options of one request: the one definition of every generation option. The Python
// binding (tandem.GenerateOptions) and the C API (tandem_generate_params) carry these fields
// under these names; Resolve() checks them, once, for every front end.
struct GenerateOptions {
  Mode mode = Mode::kLarge;
  int block_length = 0;             // γ: drafts per round (speed, vanilla) or block size with
                                    // M_L's token (tandem); in [1, the bundle's max_block_length];
                                    // 0: the bundle's default
  bool adaptive = false;            // speed/vanilla: the router ends each draft early (block_length
                                    // is then unused: max_block_length caps the draft)
  float router_threshold = -1.0f;   // τ: adaptive drafting also stops when the router's score is
                                    // below it; < 0: the bundle's default
  float draft_cost = -1.0f;         // adaptive: c, one drafter call's time in M_L steps (one M_L
                                    // call over one token); < 0: measured on this machine
                                    // (Model::decode_costs)
  float verify_cost = -1.0f;        // adaptive: β, the time each further token adds to an M_L call,
                                    // in M_L steps (M_L over n tokens costs 1 + β(n - 1)); < 0:
                                    // measured. Pass both for sampling that repeats across runs
  int min_block_length = 0;         // adaptive: always draft at least this many (>= 0)
  int max_block_length = 0;         // adaptive: draft at most this many, in [min_block_length, the
                                    // bundle's max_block_length]; 0: speed: the γ its tandem drafter
                                    // was trained at (if known, else as vanilla), vanilla: the
                                    // bundle's max_block_length
  int max_new_tokens = 128;         // >= 0
  bool do_sample = false;           // false: greedy (argmax)
  float temperature = 1.0f;         // > 0, used when do_sample
  int top_k = 0;                    // >= 0; 0: off
  float top_p = 1.0f;               // in (0, 1]; 1: off
  uint64_t seed = 0;                // sampling RNG seed
  std::vector<int64_t> eos_token_ids;  // empty: the bundle's EOS ids
  bool ignore_eos = false;          // true: never stop on EOS
};

// The bundle's values for the options left at "the bundle's default" (Model::defaults()).
struct BundleDefaults {
  int block_length = 0;        // the default γ
  int max_block_length = 0;    // the longest γ a request may ask for (block_length, max_block_length)
  float router_threshold = 0;  // the default τ
  int trained_block_length = 0;  // the γ the tandem drafter was trained at (0: unknown): adaptive
                                 // `speed` drafts at most that many unless max_block_length says
};

// `options` checked (throws kInvalidArgument naming the first option out of range) and with
// every option left at "the bundle's default" set from `bundle`. Generator calls it; it is
// public for loops that decode without a bundle (the PyTorch reference, train/reference.py).
GenerateOptions Resolve(GenerateOptions options, const BundleDefaults& bundle);

// Counters of one generation. Times in seconds.
struct Stats {
  int64_t prompt_tokens = 0;
  int64_t new_tokens = 0;
  int64_t rounds = 0;
  int64_t large_calls = 0;
  int64_t drafter_calls = 0;         // drafter (M_S) calls, tandem or plain
  int64_t drafted = 0;               // draft tokens proposed
  int64_t accepted = 0;              // draft tokens accepted
  std::vector<int64_t> accepted_histogram;  // [n] = rounds that accepted n drafts
  double time_to_first_token = 0.0;
  double total_time = 0.0;
  double ort_time = 0.0;             // inside OrtSession::Run
  double large_time = 0.0;           // part of ort_time spent in M_L
  double drafter_time = 0.0;         // part of ort_time spent in the drafter
  double draft_cost = 0.0;           // adaptive: the c and β the stopping rule used (else 0)
  double verify_cost = 0.0;

  double acceptance_rate() const { return drafted ? double(accepted) / double(drafted) : 0.0; }
  double tokens_per_second() const { return total_time > 0 ? double(new_tokens) / total_time : 0.0; }
  double loop_time() const { return total_time - ort_time; }
};

// What drafting and verifying cost on this machine, in M_L steps (one M_L call over one
// token): the adaptive stopping rule weighs them against the router's acceptance odds.
struct DecodeCosts {
  double draft = 0.0;   // c: one drafter call, with the memory rows it takes in
  double verify = 0.0;  // β: each further token of an M_L call
};

class Model : public std::enable_shared_from_this<Model> {
 public:
  // Loads the bundle and creates the ONNX Runtime sessions. Throws tandem::Error.
  static std::shared_ptr<const Model> Load(const ModelOptions& options);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const Manifest& manifest() const;  // the bundle's tandem.json as read and checked at Load
  const std::string& bundle_path() const;
  int64_t vocab_size() const;
  int64_t context_length() const;
  BundleDefaults defaults() const;  // the bundle's default γ, longest γ and default τ
  bool has_tandem_drafter() const;  // modes tandem, speed
  bool has_plain_drafter() const;   // mode vanilla
  bool has_router(Mode mode) const;
  const std::vector<int64_t>& eos_token_ids() const;
  const std::string& tokenizer_path() const;  // empty if the bundle ships none
  uint64_t shared_weight_bytes() const;       // bytes of tensors loaded once for several graphs
  // The costs of `mode`'s drafter (speed/tandem: the tandem one, vanilla: the plain one),
  // measured on first use by a short private request on a synthetic prompt (M_L timed over
  // 1 and several tokens, the drafter over fixed-γ rounds; about 40 M_L calls), then kept.
  // Adaptive requests that leave draft_cost / verify_cost < 0 use them. Throws kInvalidArgument
  // when the bundle has no such drafter.
  DecodeCosts decode_costs(Mode mode) const;

 private:
  friend class Generator;  // reads the sessions and manifest through impl()
  struct Impl;
  const Impl& impl() const { return *impl_; }
  explicit Model(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// One request: owns KV caches, the pending token, RNG and stats.
class Generator {
 public:
  // Validates options and the prompt, then runs the prefill (M_L over the prompt) and
  // emits the first token. Throws tandem::Error.
  Generator(std::shared_ptr<const Model> model, const std::vector<int64_t>& prompt,
            const GenerateOptions& options);
  ~Generator();
  Generator(const Generator&) = delete;
  Generator& operator=(const Generator&) = delete;

  // Runs one decoding round and returns the tokens it emitted (the first call also
  // returns the token of the prefill). Returns an empty vector once done().
  std::vector<int64_t> Step();
  // Runs to the end and returns all generated tokens.
  std::vector<int64_t> Run();

  // Snapshots, copied while no other thread is inside Step / Run (else kBusy).
  bool done() const;
  FinishReason finish_reason() const;
  std::vector<int64_t> tokens() const;  // generated so far
  Stats stats() const;

 private:
  friend class Model;  // decode_costs times a private request
  static DecodeCosts MeasureCosts(std::shared_ptr<const Model> model, Mode mode);
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace tandem
