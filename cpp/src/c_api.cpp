// The C API: a thin shell over the C++ API that turns every exception into a status.
#include "tandem/tandem_c.h"

#include <algorithm>
#include <type_traits>
#include <atomic>
#include <cstring>
#include <vector>
#include <memory>
#include <string>

#include "c_api_internal.hpp"
#include "c_options.hpp"
#include "tandem/tandem.hpp"

using tandem::capi::Guard;
using tandem::capi::Require;

namespace {

// Calls visit(c_field, cpp_field) for each field the C struct and GenerateOptions share as
// numbers: the one list of them, read both ways (mode and EOS ids are converted apart).
template <typename C, typename Cpp, typename Visit>
void EachNumber(C& c, Cpp& o, Visit&& visit) {
  visit(c.block_length, o.block_length); visit(c.adaptive, o.adaptive); visit(c.router_threshold, o.router_threshold);
  visit(c.min_block_length, o.min_block_length); visit(c.max_block_length, o.max_block_length);
  visit(c.max_new_tokens, o.max_new_tokens); visit(c.do_sample, o.do_sample); visit(c.temperature, o.temperature);
  visit(c.top_k, o.top_k); visit(c.top_p, o.top_p); visit(c.seed, o.seed); visit(c.ignore_eos, o.ignore_eos);
  visit(c.draft_cost, o.draft_cost); visit(c.verify_cost, o.verify_cost);
}
}  // namespace

namespace tandem::detail {

tandem_generate_params DefaultCParams() {
  tandem_generate_params c{};
  const GenerateOptions defaults;
  EachNumber(c, defaults, [](auto& to, const auto& from) { to = static_cast<std::decay_t<decltype(to)>>(from); });
  c.struct_size = sizeof(c);
  c.mode = tandem::ToString(defaults.mode);
  return c;
}

GenerateOptions OptionsFromC(const tandem_generate_params* params) {
  tandem_generate_params c = DefaultCParams();
  if (params) {
    Require(params->struct_size >= sizeof(params->struct_size) && params->struct_size <= sizeof(c),
            "params->struct_size is not the size of a tandem_generate_params this library knows: set it with "
            "tandem_generate_params_init(&params, sizeof(params)) (a header newer than the library?)");
    std::memcpy(&c, params, params->struct_size);  // fields past the app's struct keep their defaults
  }
  GenerateOptions o;
  EachNumber(c, o, [](const auto& from, auto& to) { to = static_cast<std::decay_t<decltype(to)>>(from); });
  if (c.mode) o.mode = tandem::ParseMode(c.mode);
  Require(c.eos_token_ids || c.n_eos_token_ids == 0, "params->eos_token_ids is NULL but n_eos_token_ids is not 0");
  if (c.n_eos_token_ids) o.eos_token_ids.assign(c.eos_token_ids, c.eos_token_ids + c.n_eos_token_ids);
  return o;
}

}  // namespace tandem::detail

extern "C" {

tandem_status tandem_generate_params_init(tandem_generate_params* params, size_t struct_size) {
  return Guard([&] {
    Require(params != nullptr, "params must not be NULL");
    const tandem_generate_params defaults = tandem::detail::DefaultCParams();
    Require(struct_size >= sizeof(defaults.struct_size) && struct_size <= sizeof(defaults),
            "struct_size must be sizeof(tandem_generate_params) (a header newer than the library?)");
    std::memcpy(params, &defaults, struct_size);
    params->struct_size = struct_size;
  });
}

tandem_status tandem_model_load(const char* bundle_path, int threads, const char* ort_library, tandem_model** out) {
  return Guard([&] {
    Require(bundle_path && out, "bundle_path and out must not be NULL");
    *out = nullptr;
    tandem::ModelOptions o;
    o.bundle_path = bundle_path;
    o.intra_op_threads = threads;
    if (ort_library) o.ort_library = ort_library;
    auto holder = std::make_unique<tandem_model>();
    holder->model = tandem::Model::Load(o);
    *out = holder.release();
  });
}

int tandem_max_threads(void) { return tandem::MaxThreads(); }

void tandem_model_free(tandem_model* model) { delete model; }

int64_t tandem_model_vocab_size(const tandem_model* model) { return model ? model->model->vocab_size() : 0; }

tandem_status tandem_model_decode_costs(const tandem_model* model, const char* mode, double* draft_cost,
                                        double* verify_cost) {
  return Guard([&] {
    Require(model && mode && draft_cost && verify_cost, "model, mode, draft_cost and verify_cost must not be NULL");
    const tandem::DecodeCosts costs = model->model->decode_costs(tandem::ParseMode(mode));
    *draft_cost = costs.draft;
    *verify_cost = costs.verify;
  });
}

tandem_status tandem_generator_create(const tandem_model* model, const int64_t* prompt, size_t n_prompt,
                                      const tandem_generate_params* params, tandem_generator** out) {
  return Guard([&] {
    Require(model && out && (prompt || n_prompt == 0), "model, prompt and out must not be NULL");
    *out = nullptr;
    const tandem::GenerateOptions o = tandem::detail::OptionsFromC(params);
    auto holder = std::make_unique<tandem_generator>();
    holder->gen = std::make_unique<tandem::Generator>(model->model, std::vector<int64_t>(prompt, prompt + n_prompt), o);
    *out = holder.release();
  });
}

void tandem_generator_free(tandem_generator* gen) { delete gen; }

tandem_status tandem_generator_step(tandem_generator* gen, int64_t* out, size_t capacity, size_t* n_out, int* done) {
  return Guard([&] {
    Require(gen && out && n_out && done, "gen, out, n_out and done must not be NULL");
    *n_out = 0;
    if (gen->busy.exchange(true))
      throw tandem::Error(tandem::ErrorCode::kBusy,
                          "this generator is already running in another thread; use one generator per thread");
    struct Release {
      std::atomic<bool>& flag;
      ~Release() { flag.store(false); }
    } release{gen->busy};
    if (gen->pending.empty()) gen->pending = gen->gen->Step();
    const size_t n = std::min(capacity, gen->pending.size());
    std::memcpy(out, gen->pending.data(), n * sizeof(int64_t));
    gen->pending.erase(gen->pending.begin(), gen->pending.begin() + static_cast<std::ptrdiff_t>(n));
    *n_out = n;
    *done = gen->pending.empty() && gen->gen->done() ? 1 : 0;
  });
}

const char* tandem_generator_finish_reason(const tandem_generator* gen) {
  return gen ? tandem::ToString(gen->gen->finish_reason()) : "";
}

const char* tandem_last_error(void) { return tandem::capi::g_last_error.c_str(); }

}  // extern "C"
