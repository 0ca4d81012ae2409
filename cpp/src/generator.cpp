// Model (bundle + sessions) and Generator (one request): the decoding loop.
//
// The algorithm is docs/CONTRACTS.md "Decoding modes"; train/reference.py is the same
// algorithm in PyTorch and the oracle of the tests. One round = draft → verify → accept →
// emit → rewind; `large` is a round with no drafts, `tandem` a round that accepts all.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <limits>
#include <optional>
#include <thread>
#include <unordered_set>

#include "graph.hpp"
#include "ort_env.hpp"
#include "sampling.hpp"
#include "tandem/manifest.hpp"
#include "tandem/tandem.hpp"

namespace tandem {

using detail::Graph;
using detail::KvCache;
using detail::RunArgs;

namespace {

using Clock = std::chrono::steady_clock;
double Since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

[[noreturn]] void Invalid(const std::string& what) { throw Error(ErrorCode::kInvalidArgument, what); }

constexpr int64_t kPrefillChunk = 256;  // prompt positions per M_L / drafter call in a prefill

// The thread cap (MaxThreads). ONNX Runtime starts every worker of a session's pool while it
// creates the session, and the workers spin, so load time grows with the count: the default
// int4 bundle, on a busy 2-core machine, loaded with 8 threads in 0.2 s, 64 in 1.4 s, 256 in
// 5 s, 1024 in 27 s (1024 + 1024 drafter threads: over 60 s); 10**6 hangs. The cap scales
// with the machine so that it accepts every real one (the largest single-image servers have
// ~2000 hardware threads: a 32-socket HPE Superdome Flex has 1792): one thread per hardware
// thread is the most that helps, and 4x leaves room for deliberate oversubscription. The
// floor keeps a count tuned for an ordinary server loadable on a small VM or container (and
// covers hardware_concurrency() reporting 0). It stops typos and unit mix-ups; it is not a
// tuning limit.
constexpr unsigned kThreadsPerHardwareThread = 4;
constexpr int kMinThreadCap = 64;

void CheckThreads(const char* name, int value, const char* zero_means) {
  const int cap = MaxThreads();
  if (value < 0) Invalid(std::string(name) + " must be >= 0 (0: " + zero_means + ")");
  if (value > cap)
    Invalid(std::string(name) + "=" + std::to_string(value) + " is above the cap of " + std::to_string(cap) +
            " threads on this machine (" + std::to_string(kThreadsPerHardwareThread) +
            " per hardware thread, at least " + std::to_string(kMinThreadCap) + "): pass a count from 1 to " +
            std::to_string(cap) + ", or 0 for " + zero_means);
}

}  // namespace

int MaxThreads() noexcept {
  static const int cap = [] {
    const unsigned hw = std::thread::hardware_concurrency();  // 0 when unknown
    const long long scaled = static_cast<long long>(hw) * kThreadsPerHardwareThread;
    return static_cast<int>(std::min<long long>(std::max<long long>(kMinThreadCap, scaled),
                                                std::numeric_limits<int>::max()));
  }();
  return cap;
}

// ---------------------------------------------------------------------------------------
// Model

struct Model::Impl {
  Manifest manifest;
  std::unique_ptr<detail::SharedWeights> shared;  // declared before the graphs: outlives their sessions
  std::unique_ptr<Graph> large, small, draft;
  std::vector<int> small_memory_source;  // small memory input i reads large reps output [i]
};

Model::Model(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Model::~Model() = default;

std::shared_ptr<const Model> Model::Load(const ModelOptions& options) {
  // before anything else: a session created with a huge count would hang starting its threads
  CheckThreads("intra_op_threads", options.intra_op_threads, "one per core");
  CheckThreads("drafter_threads", options.drafter_threads, "as intra_op_threads");
  auto impl = std::make_unique<Impl>();
  impl->manifest = ReadManifest(options.bundle_path);
  Ort::Env& env = detail::OrtEnvironment(options.ort_library);
  Ort::SessionOptions so;
  so.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
  if (options.intra_op_threads > 0) so.SetIntraOpNumThreads(options.intra_op_threads);
  so.SetInterOpNumThreads(1);
  so.SetExecutionMode(ExecutionMode::ORT_SEQUENTIAL);
  if (options.device == Device::kCuda) {
    if (!detail::HasExecutionProvider("CUDAExecutionProvider"))
      throw Error(ErrorCode::kDeviceUnavailable,
                  "device=cuda asked for, but the ONNX Runtime in use (" + detail::LoadedOrtLibrary() +
                      ") has no CUDAExecutionProvider; install onnxruntime-gpu or use device=cpu");
    OrtCUDAProviderOptions cuda{};
    so.AppendExecutionProvider_CUDA(cuda);
  }
  const auto& m = impl->manifest;
  // Tensors the graphs read from the same bytes (a drafter with M_L's embedding and head) are
  // mapped once, and their prepacked forms shared by the sessions. CPU only: ONNX Runtime
  // shares prepacked weights of the CPU provider (on CUDA each session copies its weights to
  // the device anyway, and that path has not been run here).
  std::vector<std::string> files{m.large.file};
  if (m.tandem_drafter) files.push_back(m.tandem_drafter->file);
  if (m.plain_drafter) files.push_back(m.plain_drafter->file);
  if (options.share_weights && options.device == Device::kCpu && files.size() > 1) impl->shared = std::make_unique<detail::SharedWeights>(files);
  detail::SharedWeights* shared = impl->shared.get();
  impl->large = std::make_unique<Graph>(m.large, env, so, shared);
  // The drafters get their own, smaller thread pool. M_L's and M_S's sessions alternate
  // within a round, and each pool's workers spin for a while after their Run: with as many
  // workers as cores, the two pools fight over the cores (measured: M_L's 2-token verify
  // took 2x its isolated time). A one-thread drafter runs on the calling thread and leaves
  // M_L's spinning workers a core of their own.
  const int drafter_threads = options.drafter_threads > 0 ? options.drafter_threads : options.intra_op_threads;
  if (drafter_threads > 0) so.SetIntraOpNumThreads(drafter_threads);
  if (m.tandem_drafter) {
    impl->small = std::make_unique<Graph>(*m.tandem_drafter, env, so, shared);
    for (int layer : m.tandem_drafter->memory_layers) {
      auto it = std::find(m.large.rep_layers.begin(), m.large.rep_layers.end(), layer);
      impl->small_memory_source.push_back(static_cast<int>(it - m.large.rep_layers.begin()));
    }
  }
  if (m.plain_drafter) impl->draft = std::make_unique<Graph>(*m.plain_drafter, env, so, shared);
  if (shared) shared->ReleasePages();  // the sessions hold what they prepacked
  return std::shared_ptr<const Model>(new Model(std::move(impl)));
}

const Manifest& Model::manifest() const { return impl_->manifest; }
const std::string& Model::bundle_path() const { return impl_->manifest.folder; }
int64_t Model::vocab_size() const { return impl_->manifest.vocab_size; }
int64_t Model::context_length() const { return impl_->manifest.context_length; }
BundleDefaults Model::defaults() const {
  const auto& m = impl_->manifest;
  return {m.default_block_length, m.max_block_length, m.router_threshold};
}
bool Model::has_small() const { return impl_->small != nullptr; }
uint64_t Model::shared_weight_bytes() const { return impl_->shared ? impl_->shared->bytes() : 0; }
bool Model::has_draft() const { return impl_->draft != nullptr; }
bool Model::has_router(Mode mode) const {
  const Graph* g = mode == Mode::kVanilla ? impl_->draft.get() : impl_->small.get();
  return g && !g->spec().router_score.empty();
}
const std::vector<int64_t>& Model::eos_token_ids() const { return impl_->manifest.eos_token_ids; }
const std::string& Model::tokenizer_path() const { return impl_->manifest.tokenizer; }

// ---------------------------------------------------------------------------------------
// Generator state
//
// Invariants between rounds (docs/METHOD.md §2):
//   seq = prompt + out; the pending token t = seq.back() has not been seen by M_L;
//   large_kv.length() == covered == seq.size() - 1;
//   tandem drafter: small_kv holds memory K/V for [0, covered - mem_rows); the M_L
//     representations of the other mem_rows positions wait in rows [0, mem_rows) of `reps`;
//   vanilla drafter: draft_kv holds own K/V for seq positions [0, draft_kv.length()).

struct Generator::State {
  std::shared_ptr<const Model> model;
  const Model::Impl& m;
  GenerateOptions opt;
  detail::SamplingParams sampling;
  std::unordered_set<int64_t> eos;
  int gamma = 0;  // drafts per round before clamping (γ for speed/vanilla, γ-1 for tandem)
  float tau = 0.8f;
  const Graph* drafter = nullptr;  // small (tandem, speed) or draft (vanilla)
  bool use_memory = false;         // tandem drafter: M_L representations flow to M_S

  std::vector<int64_t> seq;
  std::vector<int64_t> out;
  FinishReason finish = FinishReason::kNotFinished;
  std::vector<int64_t> step_tokens;  // emitted by the running Step / prefill

  KvCache large_kv;                  // bound to M_L's session; capacity = the request's length
  std::optional<KvCache> drafter_kv;
  std::vector<float> large_logits;   // [γ + 1, V]: M_L's logits rows of the newest call
  std::vector<float> drafter_logits;  // [V]: every drafter call returns its last row only
  // a drafter with a reduced vocabulary writes its N logits here; they are scattered into
  // drafter_logits, whose other entries stay -inf (probability 0: it never proposes them)
  std::vector<float> draft_vocab_logits;
  std::vector<float> router;          // [1]
  std::vector<std::vector<float>> reps;  // tandem only, per large reps output: [capacity + 1, d_L]
  int64_t mem_rows = 0;
  std::vector<int64_t> block;              // [t, d_1..d_g]: the ids M_L verifies
  std::vector<std::vector<float>> q;       // sampling: processed drafter distributions
  std::vector<float> p;                    // sampling: processed M_L distribution
  detail::Rng rng;
  Stats stats;
  Clock::time_point started;
  std::atomic<bool> busy{false};

  State(std::shared_ptr<const Model> model_in, const GenerateOptions& options, int64_t capacity)
      : model(std::move(model_in)),
        m(model->impl()),
        opt(options),
        large_kv(*m.large, capacity),
        rng(options.seed) {}

  int64_t V() const { return m.manifest.vocab_size; }
  int64_t room() const {
    return std::min<int64_t>(opt.max_new_tokens - static_cast<int64_t>(out.size()),
                             m.manifest.context_length - static_cast<int64_t>(seq.size()));
  }

  bool Done() const { return finish != FinishReason::kNotFinished && step_tokens.empty(); }
  std::vector<int64_t> StepUnguarded();

  // ---- choosing and emitting --------------------------------------------------------
  int64_t Choose(const float* logits) {
    if (!sampling.do_sample) return detail::Argmax(logits, V());
    detail::ProcessLogits(logits, V(), sampling, p);
    return detail::SampleFrom(p.data(), V(), rng);
  }

  // Appends one token to the output; returns false once generation has finished.
  bool Emit(int64_t token) {
    seq.push_back(token);
    out.push_back(token);
    step_tokens.push_back(token);
    ++stats.new_tokens;
    if (out.size() == 1) stats.time_to_first_token = Since(started);
    if (!opt.ignore_eos && eos.count(token)) finish = FinishReason::kEos;
    else if (static_cast<int64_t>(out.size()) >= opt.max_new_tokens) finish = FinishReason::kMaxNewTokens;
    else if (static_cast<int64_t>(seq.size()) >= m.manifest.context_length) finish = FinishReason::kLength;
    return finish == FinishReason::kNotFinished;
  }

  // ---- graph calls -----------------------------------------------------------------
  // M_L over ids; the logits of ids [logits_from, n) land in large_logits, the
  // representations (tandem drafter only) at row `rep_row` of `reps`.
  void RunLarge(const int64_t* ids, int64_t n, int64_t rep_row, int64_t logits_from) {
    RunArgs a;
    a.ids = ids;
    a.num_ids = n;
    a.logits_from = logits_from;
    a.logits = large_logits.data();
    for (auto& r : reps) a.reps.push_back(r.data() + rep_row * m.manifest.large.hidden_size);
    double t = detail::RunGraph(*m.large, large_kv, a);
    stats.ort_time += t;
    stats.large_time += t;
    ++stats.large_calls;
  }

  // The drafter over ids (after the pending memory rows, tandem drafter); the logits of the
  // last id land in drafter_logits, its router score in router[0].
  void RunDrafter(const int64_t* ids, int64_t n, int64_t memory_rows) {
    RunArgs a;
    a.ids = ids;
    a.num_ids = n;
    a.memory_rows = memory_rows;
    for (int src : m.small_memory_source) if (use_memory) a.memory.push_back(reps[src].data());
    a.logits_from = n - 1;
    const auto& vocab = drafter->spec().draft_vocab;
    a.logits = vocab.empty() ? drafter_logits.data() : draft_vocab_logits.data();
    a.router = router.empty() ? nullptr : router.data();
    double t = detail::RunGraph(*drafter, *drafter_kv, a);
    for (size_t i = 0; i < vocab.size(); ++i) drafter_logits[static_cast<size_t>(vocab[i])] = draft_vocab_logits[i];
    stats.ort_time += t;
    stats.small_time += t;
    ++stats.small_calls;
  }

  // ---- the phases of a round ---------------------------------------------------------
  void Prefill() {
    const int64_t n = static_cast<int64_t>(seq.size());
    for (int64_t pos = 0; pos < n; pos += kPrefillChunk) {
      const int64_t len = std::min(kPrefillChunk, n - pos);
      RunLarge(seq.data() + pos, len, pos, len - 1);  // logits of the chunk's last position
    }
    if (use_memory) mem_rows = n;
    if (drafter && !use_memory) CatchUpDrafter(n);  // the plain drafter reads the prompt too
    Emit(Choose(large_logits.data()));
  }

  // Drafts up to `max_drafts` tokens after t into block[1..]; returns how many.
  int Draft(int max_drafts) {
    for (int k = 1; k <= max_drafts; ++k) {
      if (k == 1) FirstDraftCall();
      else RunDrafter(&block.back(), 1, 0);
      const float* logits = drafter_logits.data();
      if (opt.adaptive && k > opt.min_block_length && router[0] < tau) return k - 1;
      int64_t d;
      if (sampling.do_sample) {
        detail::ProcessLogits(logits, V(), sampling, q[k - 1]);
        d = detail::SampleFrom(q[k - 1].data(), V(), rng);
      } else {
        d = detail::Argmax(logits, V());
      }
      block.push_back(d);
    }
    return max_drafts;
  }

  // First drafter call of a round: feeds the pending memory (tandem drafter) or every
  // token the plain drafter has not seen, ending with t.
  void FirstDraftCall() {
    if (use_memory) {
      RunDrafter(&block[0], 1, mem_rows);
      mem_rows = 0;
      return;
    }
    CatchUpDrafter(static_cast<int64_t>(seq.size()));
  }

  // Feeds the plain drafter seq[its length, end), in chunks.
  void CatchUpDrafter(int64_t end) {
    for (int64_t pos = drafter_kv->length(); pos < end;) {
      const int64_t len = std::min(kPrefillChunk, end - pos);
      RunDrafter(seq.data() + pos, len, 0);
      pos += len;
    }
  }

  // Runs one round; emits its tokens. Requires !done.
  void Round() {
    const int64_t covered = large_kv.length();
    const int64_t drafter_keep_base = drafter_kv ? drafter_kv->length() + (use_memory ? mem_rows : 0) : 0;
    const int max_drafts = static_cast<int>(std::min<int64_t>(gamma, room() - 1));
    block.assign(1, seq.back());
    const int g = max_drafts > 0 ? Draft(max_drafts) : 0;

    // verify: M_L over [t, d_1..d_g] gives p_1..p_{g+1}
    const int64_t rep_row = use_memory ? mem_rows : 0;
    RunLarge(block.data(), g + 1, rep_row, 0);

    // accept
    int n = 0;
    int64_t next;
    if (opt.mode == Mode::kTandem) {
      n = g;
      next = Choose(large_logits.data() + g * V());
    } else if (!sampling.do_sample) {
      while (n < g && block[n + 1] == detail::Argmax(large_logits.data() + n * V(), V())) ++n;
      next = detail::Argmax(large_logits.data() + n * V(), V());
    } else {
      next = -1;
      for (; n < g; ++n) {
        detail::ProcessLogits(large_logits.data() + n * V(), V(), sampling, p);
        if (!detail::AcceptDraft(p.data(), q[n].data(), block[n + 1], rng)) {
          next = detail::SampleResidual(p.data(), q[n].data(), V(), rng);  // p already processed
          break;
        }
      }
      if (next < 0) next = Choose(large_logits.data() + g * V());  // bonus from p_{g+1}
    }
    ++stats.rounds;
    stats.drafted += g;
    stats.accepted += n;
    if (opt.mode != Mode::kLarge) {
      if (stats.accepted_histogram.size() <= static_cast<size_t>(n)) stats.accepted_histogram.resize(n + 1, 0);
      ++stats.accepted_histogram[n];
    }

    // emit d_1..d_n, then the correction / bonus token
    for (int i = 1; i <= n; ++i)
      if (!Emit(block[i])) return;
    if (!Emit(next)) return;

    // rewind: M_L keeps t, d_1..d_n; the drafter keeps what is still true
    large_kv.RewindTo(covered + 1 + n);
    if (use_memory) {
      if (g > 0) drafter_kv->RewindTo(drafter_keep_base);
      mem_rows = rep_row + n + 1;  // representations of t, d_1..d_n (rows written by verify)
    } else if (drafter_kv && g > 0) {
      drafter_kv->RewindTo(covered + std::min(n + 1, g));  // own K/V of t, d_1..d_min(n, g-1)
    }
  }
};

// ---------------------------------------------------------------------------------------
// Generator

Generator::Generator(std::shared_ptr<const Model> model, const std::vector<int64_t>& prompt,
                     const GenerateOptions& options) {
  if (!model) Invalid("model is null");
  const auto& man = model->impl().manifest;
  const GenerateOptions o = Resolve(options, model->defaults());
  if (prompt.empty()) Invalid("the prompt is empty: give at least one token");
  if (static_cast<int64_t>(prompt.size()) >= man.context_length)
    Invalid("the prompt has " + std::to_string(prompt.size()) + " tokens but the context holds " +
            std::to_string(man.context_length) + ": shorten it to leave room for new tokens");
  for (int64_t id : prompt)
    if (id < 0 || id >= man.vocab_size)
      Invalid("token id " + std::to_string(id) + " is outside the vocabulary [0, " + std::to_string(man.vocab_size) + ")");
  for (int64_t id : o.eos_token_ids)
    if (id < 0 || id >= man.vocab_size) Invalid("eos_token_id " + std::to_string(id) + " is outside the vocabulary");
  if ((o.mode == Mode::kTandem || o.mode == Mode::kSpeed) && !model->has_small())
    Invalid(std::string("mode ") + ToString(o.mode) + " needs a tandem drafter, but the bundle has none (export it with --tandem)");
  if (o.mode == Mode::kVanilla && !model->has_draft())
    Invalid("mode vanilla needs a plain drafter, but the bundle has none (export it with --plain)");
  if (o.adaptive && !model->has_router(o.mode))
    Invalid("adaptive block length needs a router, and this bundle's drafter has none");

  // The longest sequence this request can reach; every buffer is sized to it, never to more
  // than the bundle's context.
  const int64_t capacity = std::min<int64_t>(man.context_length, static_cast<int64_t>(prompt.size()) + o.max_new_tokens);
  state_ = std::make_unique<State>(std::move(model), o, capacity);
  State& s = *state_;
  s.started = Clock::now();
  s.sampling = {o.do_sample, o.temperature, o.top_k, o.top_p};
  for (int64_t id : (o.eos_token_ids.empty() ? man.eos_token_ids : o.eos_token_ids)) s.eos.insert(id);
  s.tau = o.router_threshold;
  switch (o.mode) {
    case Mode::kLarge: s.gamma = 0; break;
    case Mode::kTandem: s.gamma = o.block_length - 1; break;
    case Mode::kSpeed:
    case Mode::kVanilla: s.gamma = o.adaptive ? o.max_block_length : o.block_length; break;
  }
  s.use_memory = o.mode == Mode::kTandem || o.mode == Mode::kSpeed;
  const auto& impl = s.m;
  if (s.use_memory) s.drafter = impl.small.get();
  if (o.mode == Mode::kVanilla) s.drafter = impl.draft.get();
  const int64_t V = man.vocab_size;
  s.large_logits.assign(static_cast<size_t>((s.gamma + 1) * V), 0.0f);
  if (s.use_memory) {
    for (size_t i = 0; i < man.large.reps.size(); ++i)
      s.reps.emplace_back(static_cast<size_t>((capacity + 1) * man.large.hidden_size), 0.0f);
  }
  if (s.drafter) {
    s.drafter_kv.emplace(*s.drafter, capacity);
    const auto& vocab = s.drafter->spec().draft_vocab;
    s.drafter_logits.assign(static_cast<size_t>(V), vocab.empty() ? 0.0f : -std::numeric_limits<float>::infinity());
    s.draft_vocab_logits.assign(vocab.size(), 0.0f);
    if (!s.drafter->spec().router_score.empty()) s.router.assign(1, 0.0f);
    if (o.do_sample) s.q.assign(static_cast<size_t>(std::max(s.gamma, 1)), std::vector<float>());
  }
  s.seq.reserve(static_cast<size_t>(capacity));
  s.seq = prompt;
  // no reallocation while generating: a reader refused too late never sees freed memory
  s.out.reserve(static_cast<size_t>(capacity));
  s.stats.prompt_tokens = static_cast<int64_t>(prompt.size());
  if (o.max_new_tokens == 0) {
    s.finish = FinishReason::kMaxNewTokens;
  } else {
    s.Prefill();
  }
  s.stats.total_time = Since(s.started);
}

Generator::~Generator() = default;

namespace {
struct BusyGuard {
  std::atomic<bool>& flag;
  explicit BusyGuard(std::atomic<bool>& f) : flag(f) {
    if (flag.exchange(true))
      throw Error(ErrorCode::kBusy, "this Generator is already running in another thread; use one Generator per thread");
  }
  ~BusyGuard() { flag.store(false); }
};
}  // namespace

std::vector<int64_t> Generator::Step() {
  BusyGuard guard(state_->busy);
  return state_->StepUnguarded();
}

std::vector<int64_t> Generator::State::StepUnguarded() {
  State& s = *this;
  std::vector<int64_t> emitted;
  emitted.swap(s.step_tokens);  // the prefill's token, on the first call
  if (s.finish != FinishReason::kNotFinished) return emitted;
  auto t0 = Clock::now();
  s.Round();
  s.stats.total_time += Since(t0);
  emitted.insert(emitted.end(), s.step_tokens.begin(), s.step_tokens.end());
  s.step_tokens.clear();
  return emitted;
}

std::vector<int64_t> Generator::Run() {
  BusyGuard guard(state_->busy);  // held for the whole run: another thread's call is refused
  while (!state_->Done()) state_->StepUnguarded();
  state_->step_tokens.clear();
  return state_->out;
}

// The accessors read state that Step / Run write, so they too are refused while another
// thread is inside Step / Run (instead of racing with it), and return copies made under
// the guard (a reference would be read after the guard is gone).
bool Generator::done() const {
  BusyGuard guard(state_->busy);
  return state_->Done();
}
FinishReason Generator::finish_reason() const {
  BusyGuard guard(state_->busy);
  return state_->finish;
}
std::vector<int64_t> Generator::tokens() const {
  BusyGuard guard(state_->busy);
  return state_->out;
}
Stats Generator::stats() const {
  BusyGuard guard(state_->busy);
  return state_->stats;
}

}  // namespace tandem
