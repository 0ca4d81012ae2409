#include "sampling.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

namespace tandem::detail {

int64_t Argmax(const float* logits, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (logits[i] > logits[best]) best = i;
  return best;
}

namespace {
// e^x for x <= 0, in float, branch-free so that the loops below vectorize: x = k·ln 2 + r with
// |r| <= ln 2 / 2, e^r by the Cephes expf polynomial (relative error about 1e-7), 2^k added to
// the exponent bits. x is clamped at -87 (e^-87 ≈ 1.6e-38): lower values give that floor, not
// 0; filtered tokens are zeroed apart.
inline float ExpNonPositive(float x) {
  x = std::max(x, -87.0f);
  const float k = static_cast<float>(static_cast<int32_t>(x * 1.44269504088896341f - 0.5f));  // round(x / ln 2)
  const float r = x - k * 0.693359375f + k * 2.12194440e-4f;
  float poly = 1.9875691500e-4f;
  poly = poly * r + 1.3981999507e-3f;
  poly = poly * r + 8.3334519073e-3f;
  poly = poly * r + 4.1665795894e-2f;
  poly = poly * r + 1.6666665459e-1f;
  poly = poly * r + 5.0000001201e-1f;
  const float y = poly * r * r + r + 1.0f;
  uint32_t bits;
  std::memcpy(&bits, &y, sizeof bits);
  bits += static_cast<uint32_t>(static_cast<int32_t>(k)) << 23;
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}
}  // namespace

void ProcessLogits(const float* logits, int64_t n, const SamplingParams& params, std::vector<float>& probs) {
  probs.resize(static_cast<size_t>(n));
  const float inv_t = 1.0f / params.temperature;
  float kth = -INFINITY;  // logits below the k-th largest are dropped (ties kept)
  if (params.top_k > 0 && params.top_k < n) {
    std::vector<float> tmp(logits, logits + n);
    std::nth_element(tmp.begin(), tmp.begin() + (params.top_k - 1), tmp.end(), std::greater<float>());
    kth = tmp[static_cast<size_t>(params.top_k - 1)];
  }
  constexpr int kLanes = 16;  // independent partial results, so that the compiler vectorizes
  float lane_max[kLanes];
  std::fill(lane_max, lane_max + kLanes, -INFINITY);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) lane_max[j] = logits[i + j] > lane_max[j] ? logits[i + j] : lane_max[j];
  float max_logit = -INFINITY;  // the largest logit is always kept
  for (; i < n; ++i) max_logit = std::max(max_logit, logits[i]);
  for (float m : lane_max) max_logit = std::max(max_logit, m);
  // kept: >= kth and finite (a reduced draft vocabulary's other entries are -inf: probability 0);
  // computed for every entry, then selected, so that the loop has no branch
  auto weight = [&](float x) {
    const float e = ExpNonPositive((x - max_logit) * inv_t);
    return ((x >= kth) & (x != -INFINITY)) ? e : 0.0f;
  };
  float lane_total[kLanes] = {};
  float* out = probs.data();
  for (i = 0; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) {
      const float p = weight(logits[i + j]);
      out[i + j] = p;
      lane_total[j] += p;
    }
  double total = 0.0;
  for (; i < n; ++i) {
    out[i] = weight(logits[i]);
    total += out[i];
  }
  for (float t : lane_total) total += t;
  const float inv_total = static_cast<float>(1.0 / total);
  for (int64_t k = 0; k < n; ++k) out[k] *= inv_total;
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
