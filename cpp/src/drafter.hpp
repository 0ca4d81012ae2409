// The drafter seam: M_S behind one small interface, so the decoding loop (generator.cpp)
// never asks which drafter it has. A round drafts with FirstStep and then Step per further
// draft; M_L verifies the block; Rewind keeps what is still true (docs/CONTRACTS.md
// "Decoding modes"). Every call leaves the logits of its last token in logits() and, for a
// drafter with routers, the score of the decoding mode's router (greedy or sampled, chosen at
// construction) in router_score().
//
// TandemDrafter reads M_L's representations as memory rows (modes tandem, speed);
// PlainDrafter reads tokens only (mode vanilla).
#pragma once

#include <cstdint>
#include <vector>

#include "graph.hpp"
#include "kv_cache.hpp"
#include "tandem/tandem.hpp"

namespace tandem::detail {

// Prompt positions per M_L / drafter call in a prefill.
inline constexpr int64_t kPrefillChunk = 256;

class Drafter {
 public:
  // `capacity`: the longest sequence of the request; `stats`: the request's counters;
  // `sampled_router`: read the sampled router's score (sampling), else the greedy router's.
  Drafter(const Graph& graph, int64_t capacity, int64_t vocab_size, Stats& stats, bool sampled_router);
  virtual ~Drafter() = default;
  Drafter(const Drafter&) = delete;
  Drafter& operator=(const Drafter&) = delete;

  // Where M_L's next call writes the representations of its tokens: one pointer per reps
  // output of M_L, `offset` rows past the memory not yet fed to the drafter. Empty: the
  // drafter does not read them (M_L's call then leaves them unbound).
  virtual std::vector<float*> MemorySink(int64_t offset) { return {}; }
  // M_L has run over the whole prompt.
  virtual void Prefill(const std::vector<int64_t>& prompt) = 0;
  // The first call of a round: everything the drafter has not seen, up to the pending token
  // seq.back().
  virtual void FirstStep(const std::vector<int64_t>& seq) = 0;
  // A further call of the round, on the previous draft token.
  void Step(int64_t token) { Run(&token, 1, 0); }
  // After verification: M_L had covered `covered` positions when the round began, the round
  // drafted `drafted` tokens and M_L accepted the first `accepted` of them.
  virtual void Rewind(int64_t covered, int drafted, int accepted) = 0;

  const float* logits() const { return logits_.data(); }  // [V] of the last call's last token
  bool has_router() const { return !router_.empty(); }
  float router_score() const { return router_[0]; }

 protected:
  // The graph over `ids` (after `memory_rows` rows of Memory()); logits of the last id.
  void Run(const int64_t* ids, int64_t n, int64_t memory_rows);
  // The memory rows the next call reads (one pointer per memory input of the graph).
  virtual std::vector<const float*> Memory() const { return {}; }

  KvCache kv_;

 private:
  const Graph& graph_;
  Stats& stats_;
  std::vector<float> logits_;        // [V]; a reduced draft vocabulary's columns are scattered
                                     // here, the other entries stay -inf (never proposed)
  std::vector<float> vocab_logits_;  // [N]: the logits of a reduced draft vocabulary
  std::vector<float> router_;        // [1], or empty without routers
  bool sampled_router_;
};

// The tandem drafter: its attention reads M_L's representations of every position M_L has
// processed. Invariant between rounds: the cache holds memory K/V of [0, covered - pending),
// and M_L's representations of the other `pending` positions wait in rows [0, pending) of
// the reps buffers, to be fed as memory rows before the next token.
class TandemDrafter final : public Drafter {
 public:
  // `memory_source[i]`: the M_L reps output that memory input i reads; M_L has `reps_outputs`
  // reps outputs of width `hidden_size`.
  TandemDrafter(const Graph& graph, int64_t capacity, int64_t vocab_size, Stats& stats, bool sampled_router,
                std::vector<int> memory_source, size_t reps_outputs, int64_t hidden_size);

  std::vector<float*> MemorySink(int64_t offset) override;
  void Prefill(const std::vector<int64_t>& prompt) override;
  void FirstStep(const std::vector<int64_t>& seq) override;
  void Rewind(int64_t covered, int drafted, int accepted) override;

 private:
  std::vector<const float*> Memory() const override;

  std::vector<int> memory_source_;
  int64_t hidden_size_;
  std::vector<std::vector<float>> reps_;  // per M_L reps output: [capacity + 1, hidden_size]
  int64_t pending_ = 0;
};

// The plain drafter: an ordinary decoder over the tokens. Invariant between rounds: its cache
// holds its own K/V of seq[0, length) for a prefix of the sequence.
class PlainDrafter final : public Drafter {
 public:
  using Drafter::Drafter;

  void Prefill(const std::vector<int64_t>& prompt) override;
  void FirstStep(const std::vector<int64_t>& seq) override;
  void Rewind(int64_t covered, int drafted, int accepted) override;

 private:
  // Feeds seq[the cache's length, end), in chunks.
  void CatchUp(const std::vector<int64_t>& seq, int64_t end);
};

}  // namespace tandem::detail
