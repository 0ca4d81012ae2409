// tandem_generate: load a bundle and generate from token ids, with no Python at run time.
//
//   tandem_generate BUNDLE --ids 1,2,3 [--mode speed] [--block-length 4] [--max-new-tokens 64]
//                   [--sample --temperature 0.8 --top-k 50 --top-p 0.95 --seed 1]
//                   [--adaptive] [--threads 2] [--ort-library /path/libonnxruntime.so]
//
// Prints the generated ids on one line, then "finish_reason: ..." and statistics.
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "tandem/tandem.hpp"

namespace {

void Usage() {
  std::cerr << "usage: tandem_generate BUNDLE --ids ID,ID,... [--mode large|tandem|speed|vanilla]\n"
               "       [--block-length N] [--adaptive] [--max-new-tokens N] [--sample] [--temperature T]\n"
               "       [--top-k K] [--top-p P] [--seed S] [--threads N] [--ort-library PATH]\n";
}

std::vector<int64_t> ParseIds(const std::string& text) {
  std::vector<int64_t> ids;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (item.empty()) continue;
    size_t used = 0;
    long long v = std::stoll(item, &used);
    if (used != item.size()) throw std::invalid_argument("bad token id: " + item);
    ids.push_back(v);
  }
  return ids;
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
  std::vector<int64_t> prompt;
  try {
    for (int i = 2; i < argc; ++i) {
      std::string a = argv[i];
      auto value = [&]() -> std::string {
        if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
        return argv[++i];
      };
      if (a == "--ids") prompt = ParseIds(value());
      else if (a == "--mode") opt.mode = tandem::ParseMode(value());
      else if (a == "--block-length") opt.block_length = std::stoi(value());
      else if (a == "--adaptive") opt.adaptive = true;
      else if (a == "--max-new-tokens") opt.max_new_tokens = std::stoi(value());
      else if (a == "--sample") opt.do_sample = true;
      else if (a == "--temperature") opt.temperature = std::stof(value());
      else if (a == "--top-k") opt.top_k = std::stoi(value());
      else if (a == "--top-p") opt.top_p = std::stof(value());
      else if (a == "--seed") opt.seed = std::stoull(value());
      else if (a == "--threads") model_opt.intra_op_threads = std::stoi(value());
      else if (a == "--ort-library") model_opt.ort_library = value();
      else throw std::invalid_argument("unknown option " + a);
    }
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    Usage();
    return 2;
  }
  try {
    auto model = tandem::Model::Load(model_opt);
    tandem::Generator gen(model, prompt, opt);
    const auto& out = gen.Run();
    for (size_t i = 0; i < out.size(); ++i) std::cout << (i ? " " : "") << out[i];
    std::cout << "\nfinish_reason: " << tandem::ToString(gen.finish_reason()) << "\n";
    const tandem::Stats& s = gen.stats();
    std::cout << "new_tokens: " << s.new_tokens << "  rounds: " << s.rounds << "  large_calls: " << s.large_calls
              << "  drafter_calls: " << s.drafter_calls << "  acceptance: " << s.acceptance_rate()
              << "  tokens/s: " << s.tokens_per_second() << "\n";
  } catch (const tandem::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
