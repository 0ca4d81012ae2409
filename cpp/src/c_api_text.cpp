// The C text API (text_c.h): a shell over the C++ text API (text.hpp) that turns every
// exception into a status.
#include "tandem/text_c.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "c_api_internal.hpp"
#include "c_options.hpp"
#include "tandem/text.hpp"

struct tandem_tokenizer {
  std::shared_ptr<const tandem::Tokenizer> tokenizer;
};

namespace {

using tandem::capi::Guard;
using tandem::capi::Require;

const char* StaticReason(const std::string& reason) {
  for (const char* r : {"eos", "max_new_tokens", "length", "stop", "cancelled"})
    if (reason == r) return r;
  return "";
}

}  // namespace

extern "C" {

tandem_status tandem_tokenizer_load(const char* path, tandem_tokenizer** out) {
  return Guard([&] {
    Require(path && out, "path and out must not be NULL");
    *out = nullptr;
    auto holder = std::make_unique<tandem_tokenizer>();
    holder->tokenizer = tandem::Tokenizer::Load(path);
    *out = holder.release();
  });
}

tandem_status tandem_model_tokenizer(const tandem_model* model, tandem_tokenizer** out) {
  return Guard([&] {
    Require(model && out, "model and out must not be NULL");
    *out = nullptr;
    auto holder = std::make_unique<tandem_tokenizer>();
    holder->tokenizer = tandem::LoadTokenizer(*model->model);
    *out = holder.release();
  });
}

void tandem_tokenizer_free(tandem_tokenizer* tokenizer) { delete tokenizer; }

tandem_status tandem_tokenizer_encode(const tandem_tokenizer* tokenizer, const char* text, size_t len,
                                      int add_special_tokens, int64_t* out, size_t capacity, size_t* n_ids) {
  return Guard([&] {
    Require(tokenizer && (text || len == 0) && (out || capacity == 0) && n_ids,
            "tokenizer, text, out and n_ids must not be NULL");
    *n_ids = 0;
    const std::vector<int64_t> ids =
        tokenizer->tokenizer->Encode(std::string_view(text ? text : "", len), add_special_tokens != 0);
    std::copy_n(ids.begin(), std::min(capacity, ids.size()), out);
    *n_ids = ids.size();
  });
}

tandem_status tandem_tokenizer_decode(const tandem_tokenizer* tokenizer, const int64_t* ids, size_t n,
                                      int skip_special_tokens, char* out, size_t capacity, size_t* n_bytes) {
  return Guard([&] {
    Require(tokenizer && (ids || n == 0) && (out || capacity == 0) && n_bytes,
            "tokenizer, ids, out and n_bytes must not be NULL");
    *n_bytes = 0;
    const std::string text = tokenizer->tokenizer->Decode(std::span<const int64_t>(ids, n), skip_special_tokens != 0);
    if (capacity > text.size()) {
      std::memcpy(out, text.data(), text.size());
      out[text.size()] = '\0';
    }
    *n_bytes = text.size();
  });
}

tandem_text_params tandem_text_default_params(void) {
  tandem_text_params p{};
  p.add_special_tokens = 1;
  p.skip_special_tokens = 1;
  return p;
}

tandem_status tandem_generate_text(const tandem_model* model, const tandem_tokenizer* tokenizer, const char* prompt,
                                   size_t prompt_len, const tandem_generate_params* params,
                                   const tandem_text_params* text, tandem_text_callback on_text, void* user_data,
                                   tandem_text_result* result) {
  return Guard([&] {
    Require(model && tokenizer && (prompt || prompt_len == 0), "model, tokenizer and prompt must not be NULL");
    if (result) *result = tandem_text_result{"", 0, 0};
    const tandem_text_params t = text ? *text : tandem_text_default_params();
    Require(t.stop || t.n_stop == 0, "text->stop must not be NULL when n_stop > 0");
    tandem::TextOptions options;
    for (size_t i = 0; i < t.n_stop; ++i) {
      Require(t.stop[i] != nullptr, "a stop string is NULL");
      options.stop.emplace_back(t.stop[i]);
    }
    options.add_special_tokens = t.add_special_tokens != 0;
    options.skip_special_tokens = t.skip_special_tokens != 0;
    tandem::TextCallback callback;
    if (on_text)
      callback = [&](std::string_view piece) { return on_text(piece.data(), piece.size(), user_data) == 0; };
    const tandem::TextResult r =
        tandem::GenerateText(model->model, tokenizer->tokenizer, std::string_view(prompt ? prompt : "", prompt_len),
                             tandem::detail::OptionsFromC(params), options, callback);
    if (result) *result = tandem_text_result{StaticReason(r.finish_reason), r.prompt_ids.size(), r.ids.size()};
  });
}

}  // extern "C"
