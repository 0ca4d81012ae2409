// Generation options: mode names and Resolve, the one check of a request's options.
#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "tandem/tandem.hpp"

namespace tandem {
namespace {
[[noreturn]] void Invalid(const std::string& what) { throw Error(ErrorCode::kInvalidArgument, what); }
}  // namespace

const char* ToString(Mode mode) noexcept {
  switch (mode) {
    case Mode::kLarge: return "large";
    case Mode::kTandem: return "tandem";
    case Mode::kSpeed: return "speed";
    case Mode::kVanilla: return "vanilla";
  }
  return "?";
}

const char* ToString(FinishReason reason) noexcept {
  switch (reason) {
    case FinishReason::kNotFinished: return "";
    case FinishReason::kEos: return "eos";
    case FinishReason::kMaxNewTokens: return "max_new_tokens";
    case FinishReason::kLength: return "length";
  }
  return "?";
}

Mode ParseMode(const std::string& name) {
  for (Mode m : {Mode::kLarge, Mode::kTandem, Mode::kSpeed, Mode::kVanilla})
    if (name == ToString(m)) return m;
  Invalid("unknown mode '" + name + "': use large, tandem, speed or vanilla");
}

GenerateOptions Resolve(GenerateOptions o, const BundleDefaults& bundle) {
  const std::string most = std::to_string(bundle.max_block_length);
  if (o.max_new_tokens < 0) Invalid("max_new_tokens must be >= 0");
  if (!std::isfinite(o.temperature) || o.temperature <= 0.0f)
    Invalid("temperature must be a finite number > 0 (use do_sample=false for greedy)");
  if (o.top_k < 0) Invalid("top_k must be >= 0 (0 disables it)");
  if (!(o.top_p > 0.0f && o.top_p <= 1.0f)) Invalid("top_p must be in (0, 1]");
  if (o.block_length < 0 || o.block_length > bundle.max_block_length)
    Invalid("block_length must be in [1, " + most + "] (0: the bundle default " + std::to_string(bundle.block_length) +
            ")");
  if (o.block_length == 0) o.block_length = bundle.block_length;
  if (o.adaptive) {
    if (o.mode != Mode::kSpeed && o.mode != Mode::kVanilla) Invalid("adaptive block length applies to speed and vanilla modes");
    if (o.min_block_length < 0) Invalid("min_block_length must be >= 0");
    for (const auto& [name, value] : {std::pair{"draft_cost", o.draft_cost}, std::pair{"verify_cost", o.verify_cost}})
      if (!std::isfinite(value)) Invalid(std::string(name) + " must be a finite number (< 0: measured on this machine)");
    if (o.max_block_length < 0 || o.max_block_length > bundle.max_block_length)
      Invalid("max_block_length must be in [min_block_length, " + most + "] (0: " + most + ")");
    if (std::isnan(o.router_threshold) || (std::isinf(o.router_threshold) && o.router_threshold > 0))
      Invalid("router_threshold must be a finite number (< 0: the bundle default)");
  }
  if (o.max_block_length == 0) {
    // adaptive speed: no further than the tandem drafter was trained to draft (its later block
    // positions never were), nor below min_block_length
    const bool trained = o.adaptive && o.mode == Mode::kSpeed && bundle.trained_block_length > 0;
    o.max_block_length = trained ? std::clamp(bundle.trained_block_length, std::min(o.min_block_length, bundle.max_block_length),
                                              bundle.max_block_length)
                                 : bundle.max_block_length;
  }
  if (o.adaptive && o.max_block_length < o.min_block_length)
    Invalid("max_block_length (" + std::to_string(o.max_block_length) + ") must be >= min_block_length (" +
            std::to_string(o.min_block_length) + ")");
  if (o.router_threshold < 0) o.router_threshold = bundle.router_threshold;
  return o;
}

}  // namespace tandem
