// tandem_complete: stream a completion of a text prompt, with no Python at run time (the C++
// text API, tandem/text.hpp: the bundle's tokenizer, detokenizer and stop strings).
//
//   tandem_complete BUNDLE --prompt "def fib(n):" [--mode speed] [--block-length 4]
//                   [--max-new-tokens 64] [--stop STRING]... [--ignore-eos]
//                   [--sample --temperature 0.8 --top-k 50 --top-p 0.95 --seed 1]
//                   [--adaptive] [--threads 2] [--ort-library /path/libonnxruntime.so] [--stats]
//
// Writes the generated text to stdout as it comes (the same text as the Python API's
// generate for the same prompt and options), then "finish_reason: ..." (and with --stats the
// statistics) to stderr. Exit status: 0, 1 on a tandem error (e.g. a prompt that is not
// UTF-8), 2 on bad usage.
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "tandem/text.hpp"

namespace {

void Usage() {
  std::cerr << "usage: tandem_complete BUNDLE --prompt TEXT [--mode large|tandem|speed|vanilla]\n"
               "       [--block-length N] [--adaptive] [--max-new-tokens N] [--stop STRING]... [--ignore-eos]\n"
               "       [--sample] [--temperature T] [--top-k K] [--top-p P] [--seed S] [--threads N]\n"
               "       [--ort-library PATH] [--stats]\n";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    Usage();
    return argc < 2 ? 2 : 0;
  }
  tandem::ModelOptions model_opt;
  model_opt.bundle_path = argv[1];
  tandem::GenerateOptions opt;
  tandem::TextOptions text;
  std::string prompt;
  bool have_prompt = false, stats = false;
  try {
    for (int i = 2; i < argc; ++i) {
      const std::string a = argv[i];
      auto value = [&]() -> std::string {
        if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
        return argv[++i];
      };
      if (a == "--prompt") prompt = value(), have_prompt = true;
      else if (a == "--mode") opt.mode = tandem::ParseMode(value());
      else if (a == "--block-length") opt.block_length = std::stoi(value());
      else if (a == "--adaptive") opt.adaptive = true;
      else if (a == "--max-new-tokens") opt.max_new_tokens = std::stoi(value());
      else if (a == "--stop") text.stop.push_back(value());
      else if (a == "--ignore-eos") opt.ignore_eos = true;
      else if (a == "--sample") opt.do_sample = true;
      else if (a == "--temperature") opt.temperature = std::stof(value());
      else if (a == "--top-k") opt.top_k = std::stoi(value());
      else if (a == "--top-p") opt.top_p = std::stof(value());
      else if (a == "--seed") opt.seed = std::stoull(value());
      else if (a == "--threads") model_opt.intra_op_threads = std::stoi(value());
      else if (a == "--ort-library") model_opt.ort_library = value();
      else if (a == "--stats") stats = true;
      else throw std::invalid_argument("unknown option " + a);
    }
    if (!have_prompt) throw std::invalid_argument("--prompt is required");
  } catch (const tandem::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    Usage();
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    Usage();
    return 2;
  }
  try {
    auto model = tandem::Model::Load(model_opt);
    auto tokenizer = tandem::LoadTokenizer(*model);
    const tandem::TextResult r =
        tandem::GenerateText(model, tokenizer, prompt, opt, text, [](std::string_view piece) {
          std::fwrite(piece.data(), 1, piece.size(), stdout);
          std::fflush(stdout);
          return true;
        });
    std::cerr << "finish_reason: " << r.finish_reason << "\n";
    if (stats) {
      const tandem::Stats& s = r.stats;
      std::cerr << "prompt_tokens: " << r.prompt_ids.size() << "  new_tokens: " << s.new_tokens
                << "  rounds: " << s.rounds << "  acceptance: " << s.acceptance_rate()
                << "  tokens/s: " << s.tokens_per_second() << "\n";
    }
  } catch (const tandem::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
