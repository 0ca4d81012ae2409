#include "sampling.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace tandem::detail {

int64_t Argmax(const float* logits, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (logits[i] > logits[best]) best = i;
  return best;
}

void ProcessLogits(const float* logits, int64_t n, const SamplingParams& params, std::vector<float>& probs) {
  probs.resize(static_cast<size_t>(n));
  const float inv_t = 1.0f / params.temperature;
  float kth = -INFINITY;  // logits below the k-th largest are dropped (ties kept)
  if (params.top_k > 0 && params.top_k < n) {
    std::vector<float> tmp(logits, logits + n);
    std::nth_element(tmp.begin(), tmp.begin() + (params.top_k - 1), tmp.end(), std::greater<float>());
    kth = tmp[static_cast<size_t>(params.top_k - 1)];
  }
  float max_logit = -INFINITY;
  for (int64_t i = 0; i < n; ++i)
    if (logits[i] >= kth) max_logit = std::max(max_logit, logits[i]);
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    float p = logits[i] >= kth ? std::exp((logits[i] - max_logit) * inv_t) : 0.0f;
    probs[i] = p;
    total += p;
  }
  for (float& p : probs) p = static_cast<float>(p / total);
  if (params.top_p < 1.0f) {
    // keep the smallest prefix of the sorted distribution whose mass reaches top_p
    std::vector<int64_t> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return probs[a] > probs[b]; });
    double mass = 0.0;
    size_t keep = 0;
    while (keep < order.size() && (keep == 0 || mass < params.top_p)) mass += probs[order[keep++]];
    for (size_t i = keep; i < order.size(); ++i) probs[order[i]] = 0.0f;
    for (size_t i = 0; i < keep; ++i) probs[order[i]] = static_cast<float>(probs[order[i]] / mass);
  }
}

int64_t SampleFrom(const float* probs, int64_t n, Rng& rng, double total) {
  const double u = rng.Uniform() * total;
  double acc = 0.0;
  int64_t last_nonzero = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (probs[i] <= 0.0f) continue;
    acc += probs[i];
    last_nonzero = i;
    if (u < acc) return i;
  }
  return last_nonzero;  // rounding: u landed past the accumulated total
}

bool AcceptDraft(const float* p, const float* q, int64_t d, Rng& rng) {
  // q[d] > 0 because d was sampled from q. p >= q: always accept.
  if (p[d] >= q[d]) return true;
  return rng.Uniform() * q[d] < p[d];
}

int64_t SampleResidual(const float* p, const float* q, int64_t n, Rng& rng) {
  std::vector<float> residual(static_cast<size_t>(n));
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    residual[i] = std::max(0.0f, p[i] - q[i]);
    total += residual[i];
  }
  if (total <= 0.0) return SampleFrom(p, n, rng);
  return SampleFrom(residual.data(), n, rng, total);
}

}  // namespace tandem::detail
