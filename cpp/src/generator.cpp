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
  void Round(int most_drafts) {
    const int64_t covered = large_kv.length();
    const int drafted = Draft(static_cast<int>(std::min<int64_t>(most_drafts, room() - 1)));
    Verify(drafted);
    const auto [accepted, next] = Accept(drafted);
    Count(drafted, accepted);
    if (!EmitRound(accepted, next)) return;
    Rewind(covered, drafted, accepted);
  }

  // The drafter proposes up to `most` tokens after t into block[1..]; returns how many.
  // Adaptive (docs/CONTRACTS.md "Adaptive block length"): past min_block_length drafts, the
  // round keeps drafting while that raises its expected tokens per unit of time. With the
  // router's score s_k (the odds that d_k is accepted once d_1..d_{k-1} were), P the odds that
  // every kept draft is accepted, E = 1 + Σ P_i the tokens the round emits in expectation and
  // C = calls·c + 1 + β·drafts its cost in M_L steps:
  //  - before call k (k ≥ 2), with s_{k-1} standing in for s_k: call only if P·s·C ≥ E·(c + β);
  //  - after call k: keep d_k only if P·s_k·C ≥ E·β and s_k ≥ τ (the call is spent either way).
  // The router is the decoding mode's: the drafter reads the sampled router's score when
  // sampling, the greedy router's otherwise (Generator's constructor).
  int Draft(int most) {
    block.assign(1, seq.back());
    const double c = opt.draft_cost, beta = opt.verify_cost;
    double reach = 1.0, expected = 1.0, score = 1.0;
    for (int k = 1; k <= most; ++k) {
      const bool optional = opt.adaptive && k > opt.min_block_length;
      if (optional && k > 1 && reach * score * ((k - 1) * (c + beta) + 1.0) < expected * (c + beta)) return k - 1;
      if (k == 1) drafter->FirstStep(seq);
      else drafter->Step(block.back());
      if (opt.adaptive) {
        score = drafter->router_score();
        if (optional && (score < opt.router_threshold || reach * score * (k * c + (k - 1) * beta + 1.0) < expected * beta))
          return k - 1;
        reach *= score;
        expected += reach;
      }
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
  GenerateOptions o = Resolve(options, model->defaults());
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

  if (o.adaptive && (o.draft_cost < 0 || o.verify_cost < 0)) {
    const DecodeCosts measured = model->decode_costs(o.mode);
    if (o.draft_cost < 0) o.draft_cost = static_cast<float>(measured.draft);
    if (o.verify_cost < 0) o.verify_cost = static_cast<float>(measured.verify);
  }

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
  if (o.adaptive) {
    s.stats.draft_cost = o.draft_cost;
    s.stats.verify_cost = o.verify_cost;
  }
  if (o.max_new_tokens == 0) {
    s.finish = FinishReason::kMaxNewTokens;
  } else {
    s.Prefill();
  }
  s.stats.total_time = Since(s.started);
}

Generator::~Generator() = default;

namespace {
double Median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}
}  // namespace

// A private request on a synthetic prompt (the costs do not depend on the tokens), decoded
// in rounds as generation decodes (so the drafter's memory rows and its sharing of the cores
// with M_L count): after a warm-up, cycles of three rounds, of 0, 1 and m drafts (at least 3
// cycles, then until 1.5 s or 15 cycles). Per kind of round (medians): M_L's time over 1, 2 and
// m + 1 tokens gives v(n) = t_n / t_1, fitted by 1 + β(n - 1) (least squares); the drafter's
// time in the m-draft rounds beyond the 1-draft ones, ÷ (m - 1), is c (one further call; a
// round's first call, with its memory rows, is spent either way; with max_block_length 1 that
// first call's time stands in).
DecodeCosts Generator::MeasureCosts(std::shared_ptr<const Model> model, Mode mode) {
  const Manifest& man = model->manifest();
  const int m = std::min(3, man.max_block_length);
  constexpr int kMinCycles = 3, kMaxCycles = 15;
  constexpr double kBudget = 1.5;  // seconds
  const int64_t prompt_len = std::max<int64_t>(1, std::min<int64_t>(16, man.context_length / 4));
  const int64_t per_cycle = 1 + 2 + (m + 1);  // tokens, every draft accepted at worst
  const int64_t cycles = std::min<int64_t>(kMaxCycles, (man.context_length - prompt_len - 1 - (m + 1)) / per_cycle);
  if (m < 1 || cycles < kMinCycles)
    Invalid("the bundle is too small to measure decoding costs (context " + std::to_string(man.context_length) +
            ", max_block_length " + std::to_string(man.max_block_length) + "): pass draft_cost and verify_cost");
  GenerateOptions o;
  o.mode = mode;
  o.block_length = m;
  o.ignore_eos = true;
  o.max_new_tokens = static_cast<int>(cycles * per_cycle + m + 1);
  std::vector<int64_t> prompt(static_cast<size_t>(prompt_len));
  for (int64_t i = 0; i < prompt_len; ++i) prompt[static_cast<size_t>(i)] = (i * 7919 + 11) % man.vocab_size;
  Generator g(std::move(model), prompt, o);
  State& s = *g.state_;
  s.Round(m);  // warm-up (the drafter takes in the prompt's memory)
  std::vector<double> large[3], draft[3];  // per kind of round: 0, 1, m drafts
  const int drafts[3] = {0, 1, m};
  const auto start = Clock::now();
  for (int64_t c = 0; c < cycles && (c < kMinCycles || Since(start) < kBudget); ++c)
    for (int kind = 0; kind < 3 && s.finish == FinishReason::kNotFinished; ++kind) {
      const double l0 = s.stats.large_time, d0 = s.stats.drafter_time;
      s.Round(drafts[kind]);
      large[kind].push_back(s.stats.large_time - l0);
      draft[kind].push_back(s.stats.drafter_time - d0);
    }
  const double t1 = std::max(Median(large[0]), 1e-9);
  const double v2 = Median(large[1]) / t1, vm = Median(large[2]) / t1;
  DecodeCosts costs;
  costs.verify = std::max(0.0, ((v2 - 1.0) + (vm - 1.0) * m) / (1.0 + double(m) * m));
  // max_block_length 1: no further call to time; a round's first call stands in (dearer)
  costs.draft = m > 1 ? std::max(0.0, (Median(draft[2]) - Median(draft[1])) / (m - 1) / t1) : Median(draft[1]) / t1;
  return costs;
}

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
  s.Round(s.drafts_per_round);
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
