// The drafters behind the seam of drafter.hpp.
#include "drafter.hpp"

#include <algorithm>
#include <limits>

namespace tandem::detail {

Drafter::Drafter(const Graph& graph, int64_t capacity, int64_t vocab_size, Stats& stats, bool sampled_router)
    : kv_(graph, capacity), graph_(graph), stats_(stats), sampled_router_(sampled_router) {
  const auto& vocab = graph.spec().draft_vocab;
  logits_.assign(static_cast<size_t>(vocab_size), vocab.empty() ? 0.0f : -std::numeric_limits<float>::infinity());
  vocab_logits_.assign(vocab.size(), 0.0f);
  if (graph.spec().has_router()) router_.assign(1, 0.0f);
}

void Drafter::Run(const int64_t* ids, int64_t n, int64_t memory_rows) {
  RunArgs a;
  a.ids = ids;
  a.num_ids = n;
  a.memory_rows = memory_rows;
  a.memory = Memory();
  a.logits_from = n - 1;
  const auto& vocab = graph_.spec().draft_vocab;
  a.logits = vocab.empty() ? logits_.data() : vocab_logits_.data();
  a.router = router_.empty() ? nullptr : router_.data();
  a.sampled_router = sampled_router_;
  const double t = RunGraph(graph_, kv_, a);
  for (size_t i = 0; i < vocab.size(); ++i) logits_[static_cast<size_t>(vocab[i])] = vocab_logits_[i];
  stats_.ort_time += t;
  stats_.drafter_time += t;
  ++stats_.drafter_calls;
}

// ---- tandem drafter -------------------------------------------------------------------

TandemDrafter::TandemDrafter(const Graph& graph, int64_t capacity, int64_t vocab_size, Stats& stats,
                             bool sampled_router, std::vector<int> memory_source, size_t reps_outputs,
                             int64_t hidden_size)
    : Drafter(graph, capacity, vocab_size, stats, sampled_router), memory_source_(std::move(memory_source)), hidden_size_(hidden_size) {
  for (size_t i = 0; i < reps_outputs; ++i)
    reps_.emplace_back(static_cast<size_t>((capacity + 1) * hidden_size), 0.0f);
}

std::vector<float*> TandemDrafter::MemorySink(int64_t offset) {
  std::vector<float*> rows;
  for (auto& r : reps_) rows.push_back(r.data() + (pending_ + offset) * hidden_size_);
  return rows;
}

std::vector<const float*> TandemDrafter::Memory() const {
  std::vector<const float*> memory;
  for (int source : memory_source_) memory.push_back(reps_[static_cast<size_t>(source)].data());
  return memory;
}

// The prompt's representations are pending memory: the drafter never runs on prompt tokens.
void TandemDrafter::Prefill(const std::vector<int64_t>& prompt) { pending_ += static_cast<int64_t>(prompt.size()); }

// The pending memory rows, then t.
void TandemDrafter::FirstStep(const std::vector<int64_t>& seq) {
  Run(&seq.back(), 1, pending_);
  pending_ = 0;
}

// Back to the memory-only prefix [0, covered); M_L's representations of t, d_1..d_accepted
// (written by the verification at row `pending_`) join the pending memory. A round that
// drafted nothing left the cache as it was, and its row is appended to what still pends.
void TandemDrafter::Rewind(int64_t covered, int drafted, int accepted) {
  (void)drafted;
  kv_.RewindTo(covered - pending_);
  pending_ += accepted + 1;
}

// ---- plain drafter --------------------------------------------------------------------

void PlainDrafter::CatchUp(const std::vector<int64_t>& seq, int64_t end) {
  for (int64_t pos = kv_.length(); pos < end;) {
    const int64_t len = std::min(kPrefillChunk, end - pos);
    Run(seq.data() + pos, len, 0);
    pos += len;
  }
}

void PlainDrafter::Prefill(const std::vector<int64_t>& prompt) { CatchUp(prompt, static_cast<int64_t>(prompt.size())); }

void PlainDrafter::FirstStep(const std::vector<int64_t>& seq) { CatchUp(seq, static_cast<int64_t>(seq.size())); }

// Keeps its own K/V of the accepted tokens only: t, d_1..d_min(accepted, drafted - 1). A round
// that drafted nothing leaves the cache as it is.
void PlainDrafter::Rewind(int64_t covered, int drafted, int accepted) {
  if (drafted > 0) kv_.RewindTo(covered + std::min(accepted + 1, drafted));
}

}  // namespace tandem::detail
