// Generator: one request, decoded round by round. The algorithm is docs/CONTRACTS.md
// "Decoding modes"; train/reference.py is the same algorithm in PyTorch (its decode_round is
// Round here) and the oracle of the tests. One round = draft → verify → accept → emit →
// rewind; `large` is a round with no drafts, `tandem` a round that accepts every draft. The
// drafter, tandem or plain, is behind the seam of drafter.hpp.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <unordered_set>

#include "drafter.hpp"
#include "kv_cache.hpp"
#include "model_impl.hpp"
#include "sampling.hpp"
#include "tandem/tandem.hpp"

namespace tandem {

using detail::Drafter;
using detail::kPrefillChunk;
using detail::KvCache;
using detail::RunArgs;

namespace {

using Clock = std::chrono::steady_clock;
double Since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

[[noreturn]] void Invalid(const std::string& what) { throw Error(ErrorCode::kInvalidArgument, what); }

// γ_mode: the most drafts in one round before clamping to the room left.
int DraftsPerRound(const GenerateOptions& o) {
  switch (o.mode) {
    case Mode::kLarge: return 0;
    case Mode::kTandem: return o.block_length - 1;  // M_L's token + γ-1 drafts
    case Mode::kSpeed:
    case Mode::kVanilla: return o.adaptive ? o.max_block_length : o.block_length;
  }
  return 0;
}

}  // namespace

// Invariants between rounds (docs/METHOD.md §2): seq = prompt + out; the pending token
// t = seq.back() has not been seen by M_L; large_kv.length() == seq.size() - 1 (`covered`).
// The drafter keeps its own invariant (drafter.hpp).
struct Generator::State {
  std::shared_ptr<const Model> model;
  const Model::Impl& m;
  const GenerateOptions opt;  // resolved: no "bundle default" left
  const detail::SamplingParams sampling;
  const int drafts_per_round;
  std::unordered_set<int64_t> eos;

  std::vector<int64_t> seq;
  std::vector<int64_t> out;
  FinishReason finish = FinishReason::kNotFinished;
  std::vector<int64_t> step_tokens;  // emitted by the running Step / prefill

  KvCache large_kv;                  // bound to M_L's session; capacity = the request's length
  std::vector<float> large_logits;   // [drafts_per_round + 1, V]: M_L's logits rows of its newest call
  std::unique_ptr<Drafter> drafter;  // null in mode large
  std::vector<int64_t> block;        // [t, d_1..d_g]: the ids M_L verifies
  std::vector<std::vector<float>> q;  // sampling: the drafter's processed distributions q_1..q_g
  std::vector<float> p;               // sampling: M_L's processed distribution
  detail::Rng rng;
  Stats stats;
  Clock::time_point started = Clock::now();
  std::atomic<bool> busy{false};

  State(std::shared_ptr<const Model> model_in, const GenerateOptions& resolved, int64_t capacity)
      : model(std::move(model_in)),
        m(model->impl()),
        opt(resolved),
        sampling{resolved.do_sample, resolved.temperature, resolved.top_k, resolved.top_p},
        drafts_per_round(DraftsPerRound(resolved)),
        large_kv(*m.large, capacity),
        large_logits(static_cast<size_t>((drafts_per_round + 1) * m.manifest.vocab_size)),
        q(resolved.do_sample ? static_cast<size_t>(drafts_per_round) : 0),
        rng(resolved.seed) {}

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

  // M_L over ids; the logits of ids [logits_from, n) land in large_logits, the representations
  // where the drafter reads them, `memory_offset` rows past its pending memory.
  void RunLarge(const int64_t* ids, int64_t n, int64_t logits_from, int64_t memory_offset) {
    RunArgs a;
    a.ids = ids;
    a.num_ids = n;
    a.logits_from = logits_from;
    a.logits = large_logits.data();
    if (drafter) a.reps = drafter->MemorySink(memory_offset);
    const double t = detail::RunGraph(*m.large, large_kv, a);
    stats.ort_time += t;
    stats.large_time += t;
    ++stats.large_calls;
  }

  // M_L over the prompt, in chunks; emits t.
  void Prefill() {
    const int64_t n = static_cast<int64_t>(seq.size());
    for (int64_t pos = 0; pos < n; pos += kPrefillChunk) {
      const int64_t len = std::min(kPrefillChunk, n - pos);
      RunLarge(seq.data() + pos, len, len - 1, pos);  // logits of the chunk's last position
    }
    if (drafter) drafter->Prefill(seq);
    Emit(Choose(large_logits.data()));
  }

  // ---- one round: draft → verify → accept → emit → rewind ---------------------------------
  void Round() {
    const int64_t covered = large_kv.length();
    const int drafted = Draft(static_cast<int>(std::min<int64_t>(drafts_per_round, room() - 1)));
    Verify(drafted);
    const auto [accepted, next] = Accept(drafted);
    Count(drafted, accepted);
    if (!EmitRound(accepted, next)) return;
    Rewind(covered, drafted, accepted);
  }

  // The drafter proposes up to `most` tokens after t into block[1..]; returns how many.
  // Adaptive: at step k > min_block_length a router score below τ ends the draft before d_k
  // (that drafter call is spent). The router is the decoding mode's: the drafter reads the
  // sampled router's score when sampling, the greedy router's otherwise (Generator's constructor).
  int Draft(int most) {
    block.assign(1, seq.back());
    for (int k = 1; k <= most; ++k) {
      if (k == 1) drafter->FirstStep(seq);
      else drafter->Step(block.back());
      if (opt.adaptive && k > opt.min_block_length && drafter->router_score() < opt.router_threshold) return k - 1;
      int64_t d;
      if (sampling.do_sample) {
        detail::ProcessLogits(drafter->logits(), V(), sampling, q[k - 1]);
        d = detail::SampleFrom(q[k - 1].data(), V(), rng);
      } else {
        d = detail::Argmax(drafter->logits(), V());
      }
      block.push_back(d);
    }
    return most;
  }

  // M_L over [t, d_1..d_g] in one pass: p_1..p_{g+1}.
  void Verify(int drafted) { RunLarge(block.data(), drafted + 1, 0, 0); }

  struct Acceptance {
    int accepted;  // n: drafts kept
    int64_t next;  // the token M_L adds after d_n: correction, bonus, or (tandem) its own
  };
  Acceptance Accept(int drafted) {
    const float* p_rows = large_logits.data();
    if (opt.mode == Mode::kTandem) return {drafted, Choose(p_rows + drafted * V())};  // trusts M_S
    int n = 0;
    if (!sampling.do_sample) {
      while (n < drafted && block[n + 1] == detail::Argmax(p_rows + n * V(), V())) ++n;
      return {n, detail::Argmax(p_rows + n * V(), V())};
    }
    for (; n < drafted; ++n) {
      detail::ProcessLogits(p_rows + n * V(), V(), sampling, p);
      if (!detail::AcceptDraft(p.data(), q[n].data(), block[n + 1], rng))
        return {n, detail::SampleResidual(p.data(), q[n].data(), V(), rng)};  // p already processed
    }
    return {n, Choose(p_rows + drafted * V())};  // every draft accepted: the bonus from p_{g+1}
  }

  void Count(int drafted, int accepted) {
    ++stats.rounds;
    stats.drafted += drafted;
    stats.accepted += accepted;
    if (opt.mode == Mode::kLarge) return;
    if (stats.accepted_histogram.size() <= static_cast<size_t>(accepted)) stats.accepted_histogram.resize(accepted + 1, 0);
    ++stats.accepted_histogram[accepted];
  }

  // d_1..d_n, then `next`; false once generation has finished.
  bool EmitRound(int accepted, int64_t next) {
    for (int i = 1; i <= accepted; ++i)
      if (!Emit(block[i])) return false;
    return Emit(next);
  }

  // M_L keeps t, d_1..d_n; the drafter keeps what is still true.
  void Rewind(int64_t covered, int drafted, int accepted) {
    large_kv.RewindTo(covered + 1 + accepted);
    if (drafter) drafter->Rewind(covered, drafted, accepted);
  }
};

Generator::Generator(std::shared_ptr<const Model> model, const std::vector<int64_t>& prompt,
                     const GenerateOptions& options) {
  if (!model) Invalid("model is null");
  const Manifest& man = model->manifest();
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
  if ((o.mode == Mode::kTandem || o.mode == Mode::kSpeed) && !model->has_tandem_drafter())
    Invalid(std::string("mode ") + ToString(o.mode) + " needs a tandem drafter, but the bundle has none (export it with --tandem)");
  if (o.mode == Mode::kVanilla && !model->has_plain_drafter())
    Invalid("mode vanilla needs a plain drafter, but the bundle has none (export it with --plain)");
  if (o.adaptive && !model->has_router(o.mode))
    Invalid("adaptive block length needs routers, and this bundle's drafter has none (refit them with "
            "`tandem fit-router` and re-export)");

  // The longest sequence this request can reach; every buffer is sized to it, never to more
  // than the bundle's context.
  const int64_t capacity = std::min<int64_t>(man.context_length, static_cast<int64_t>(prompt.size()) + o.max_new_tokens);
  state_ = std::make_unique<State>(std::move(model), o, capacity);
  State& s = *state_;
  const Model::Impl& impl = s.m;
  for (int64_t id : (o.eos_token_ids.empty() ? man.eos_token_ids : o.eos_token_ids)) s.eos.insert(id);
  // greedy decoding reads the greedy router (M_S's argmax is M_L's?), sampling the sampled one
  // (the acceptance probability 1 - TV at the temperature it was fitted for)
  const bool sampled_router = o.do_sample;
  if (o.mode == Mode::kTandem || o.mode == Mode::kSpeed)
    s.drafter = std::make_unique<detail::TandemDrafter>(*impl.tandem_drafter, capacity, man.vocab_size, s.stats,
                                                        sampled_router, impl.memory_source,
                                                        man.large.reps.size(), man.large.hidden_size);
  else if (o.mode == Mode::kVanilla)
    s.drafter = std::make_unique<detail::PlainDrafter>(*impl.plain_drafter, capacity, man.vocab_size, s.stats,
                                                       sampled_router);
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
