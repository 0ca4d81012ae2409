// Generates with the C API from an installed tandem:
//   consumer BUNDLE ID[,ID...] [NAME=VALUE...]   token ids in, token ids out
//   consumer --text BUNDLE PROMPT [STOP...]      text in, text out (streamed to stdout; the
//                                                C text API, mode speed, 12 new tokens)
//   consumer --encode BUNDLE TEXT                the C++ text API: the ids of TEXT, then its
//                                                decoded text on the next line
// NAME is a field of tandem_generate_params (eos_token_ids: comma-separated ids).
#include <tandem/tandem_c.h>
#include <tandem/text.hpp>
#include <tandem/text_c.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

namespace {

std::vector<int64_t> Ids(const std::string& text) {
  std::vector<int64_t> ids;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) ids.push_back(std::atoll(item.c_str()));
  return ids;
}

int WriteText(const char* piece, size_t len, void* user_data) {
  std::fwrite(piece, 1, len, stdout);
  ++*static_cast<int*>(user_data);
  return 0;
}

int Text(int argc, char** argv) {  // --text BUNDLE PROMPT [STOP...]
  tandem_model* model = nullptr;
  if (tandem_model_load(argv[2], 1, nullptr, &model) != TANDEM_OK) {
    std::fprintf(stderr, "load failed: %s\n", tandem_last_error());
    return 1;
  }
  tandem_tokenizer* tokenizer = nullptr;
  if (tandem_model_tokenizer(model, &tokenizer) != TANDEM_OK) {
    std::fprintf(stderr, "tokenizer failed: %s\n", tandem_last_error());
    tandem_model_free(model);
    return 1;
  }
  tandem_generate_params params;
  tandem_generate_params_init(&params, sizeof(params));
  params.mode = "speed";
  params.max_new_tokens = 12;
  tandem_text_params text = tandem_text_default_params();
  text.stop = argv + 4;
  text.n_stop = static_cast<size_t>(argc - 4);
  int pieces = 0;
  tandem_text_result result;
  const tandem_status st = tandem_generate_text(model, tokenizer, argv[3], std::strlen(argv[3]), &params, &text,
                                                WriteText, &pieces, &result);
  if (st == TANDEM_OK)
    std::fprintf(stderr, "finish_reason: %s\npieces: %d\nnew_tokens: %zu\n", result.finish_reason, pieces,
                 result.new_tokens);
  else
    std::fprintf(stderr, "generate failed (%d): %s\n", static_cast<int>(st), tandem_last_error());
  tandem_tokenizer_free(tokenizer);
  tandem_model_free(model);
  return st == TANDEM_OK ? 0 : 1;
}

}  // namespace

int Encode(char** argv) {  // --encode BUNDLE TEXT, through the C++ API
  try {
    auto model = tandem::Model::Load({.bundle_path = argv[2], .intra_op_threads = 1});
    auto tokenizer = tandem::LoadTokenizer(*model);
    const std::vector<int64_t> ids = tokenizer->Encode(argv[3]);
    for (int64_t id : ids) std::printf("%lld ", static_cast<long long>(id));
    std::printf("\n%s\n", tokenizer->Decode(ids).c_str());
  } catch (const tandem::Error& e) {
    std::fprintf(stderr, "error %d: %s\n", static_cast<int>(e.code()), e.what());
    return 1;
  }
  return 0;
}

int main(int argc, char** argv) {
  if (argc >= 4 && std::strcmp(argv[1], "--text") == 0) return Text(argc, argv);
  if (argc == 4 && std::strcmp(argv[1], "--encode") == 0) return Encode(argv);
  if (argc < 3) return 2;
  tandem_generate_params params;
  if (tandem_generate_params_init(&params, sizeof(params)) != TANDEM_OK) return 1;
  const std::vector<int64_t> prompt = Ids(argv[2]);
  std::vector<int64_t> eos;
  std::vector<std::string> args(argv + 3, argv + argc);
  for (const std::string& arg : args) {
    const size_t eq = arg.find('=');
    const std::string name = arg.substr(0, eq);
    const char* value = arg.c_str() + eq + 1;
    if (name == "mode") params.mode = value;
    else if (name == "block_length") params.block_length = std::atoi(value);
    else if (name == "adaptive") params.adaptive = std::atoi(value);
    else if (name == "router_threshold") params.router_threshold = std::strtof(value, nullptr);
    else if (name == "min_block_length") params.min_block_length = std::atoi(value);
    else if (name == "max_block_length") params.max_block_length = std::atoi(value);
    else if (name == "max_new_tokens") params.max_new_tokens = std::atoi(value);
    else if (name == "do_sample") params.do_sample = std::atoi(value);
    else if (name == "temperature") params.temperature = std::strtof(value, nullptr);
    else if (name == "top_k") params.top_k = std::atoi(value);
    else if (name == "top_p") params.top_p = std::strtof(value, nullptr);
    else if (name == "seed") params.seed = std::strtoull(value, nullptr, 10);
    else if (name == "eos_token_ids") eos = Ids(value);
    else if (name == "ignore_eos") params.ignore_eos = std::atoi(value);
    else {
      std::fprintf(stderr, "unknown option %s\n", name.c_str());
      return 2;
    }
  }
  params.eos_token_ids = eos.data();
  params.n_eos_token_ids = eos.size();
  tandem_model* model = nullptr;
  if (tandem_model_load(argv[1], 1, nullptr, &model) != TANDEM_OK) {
    std::fprintf(stderr, "load failed: %s\n", tandem_last_error());
    return 1;
  }
  tandem_generator* gen = nullptr;
  if (tandem_generator_create(model, prompt.data(), prompt.size(), &params, &gen) != TANDEM_OK) {
    std::fprintf(stderr, "create failed: %s\n", tandem_last_error());
    tandem_model_free(model);
    return 1;
  }
  int64_t buf[3];  // smaller than a round: exercises the carry-over of pending tokens
  int done = 0;
  while (!done) {
    size_t n = 0;
    if (tandem_generator_step(gen, buf, 3, &n, &done) != TANDEM_OK) {
      std::fprintf(stderr, "step failed: %s\n", tandem_last_error());
      break;
    }
    for (size_t i = 0; i < n; ++i) std::printf("%lld ", static_cast<long long>(buf[i]));
  }
  std::printf("\n%s\n", tandem_generator_finish_reason(gen));
  tandem_generator_free(gen);
  tandem_model_free(model);
  return 0;
}
