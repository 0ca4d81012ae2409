// Choosing tokens: greedy argmax, logits processing, and speculative acceptance.
// Mirrors train/sampling.py (the PyTorch reference).
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace tandem::detail {

struct SamplingParams {
  bool do_sample = false;
  float temperature = 1.0f;
  int top_k = 0;       // 0: off
  float top_p = 1.0f;  // 1: off
};

class Rng {
 public:
  explicit Rng(uint64_t seed) : engine_(seed) {}
  double Uniform() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }  // [0, 1)

 private:
  std::mt19937_64 engine_;
};

// Index of the first maximum.
int64_t Argmax(const float* logits, int64_t n);

// probs <- the sampling distribution of `logits` (temperature, then top-k, then top-p,
// renormalised). Tokens filtered out get exactly 0. Always keeps at least one token.
void ProcessLogits(const float* logits, int64_t n, const SamplingParams& params, std::vector<float>& probs);

// A sample from a normalised (or unnormalised, if total > 0 is given) distribution.
int64_t SampleFrom(const float* probs, int64_t n, Rng& rng, double total = 1.0);

// Leviathan et al. acceptance of draft token d: true with probability min(1, p[d]/q[d]).
bool AcceptDraft(const float* p, const float* q, int64_t d, Rng& rng);

// A sample from norm(max(0, p - q)), the correction after a rejection. Falls back to p
// when p == q (then the residual is empty and acceptance was certain anyway).
int64_t SampleResidual(const float* p, const float* q, int64_t n, Rng& rng);

}  // namespace tandem::detail
