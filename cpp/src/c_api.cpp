// The C API: a thin shell over the C++ API that turns every exception into a status.
#include "tandem/tandem_c.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>
#include <memory>
#include <string>

#include "c_api_internal.hpp"
#include "tandem/tandem.hpp"

using tandem::capi::Guard;
using tandem::capi::Require;

tandem::GenerateOptions tandem::capi::OptionsFrom(const tandem_generate_params* params) {
  tandem_generate_params p = params ? *params : tandem_generate_default_params();
  tandem::GenerateOptions o;
  o.mode = tandem::ParseMode(p.mode ? p.mode : "large");
  o.block_length = p.block_length;
  o.adaptive = p.adaptive != 0;
  o.router_threshold = p.router_threshold;
  o.max_new_tokens = p.max_new_tokens;
  o.do_sample = p.do_sample != 0;
  o.temperature = p.temperature;
  o.top_k = p.top_k;
  o.top_p = p.top_p;
  o.seed = p.seed;
  return o;
}

extern "C" {

tandem_generate_params tandem_generate_default_params(void) {
  tandem_generate_params p{};
  p.mode = "large";
  p.router_threshold = -1.0f;
  p.max_new_tokens = 128;
  p.temperature = 1.0f;
  p.top_p = 1.0f;
  return p;
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

tandem_status tandem_generator_create(const tandem_model* model, const int64_t* prompt, size_t n_prompt,
                                      const tandem_generate_params* params, tandem_generator** out) {
  return Guard([&] {
    Require(model && out && (prompt || n_prompt == 0), "model, prompt and out must not be NULL");
    *out = nullptr;
    const tandem::GenerateOptions o = tandem::capi::OptionsFrom(params);
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
