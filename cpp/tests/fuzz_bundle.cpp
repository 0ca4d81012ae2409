// Mutation fuzzer of every C++ reader of a bundle: the manifest reader (ReadManifest), the
// graph loader (the external-data protobuf scan, ONNX Runtime's load, the I/O check), the
// tokenizer (tokenizer.json: loading, then encoding, decoding and detokenizing with what
// loaded) and the
// C API's load, on malformed copies of a real bundle. Built with the other tests; `make
// sanitize` runs it under ASan + UBSan (tests/test_fuzz_cpp.py drives it).
//
//   tandem_fuzz_bundle SEED_BUNDLE WORK_DIR ITERATIONS [RNG_SEED]
//
// Each iteration copies the seed bundle into WORK_DIR/case, damages one file (tandem.json,
// tokenizer.json, or one .onnx graph) with random byte edits (among them rewritten decimal digits: external
// data offsets and lengths, which may point into another graph's data file) or JSON-aware
// edits, and loads it. Loading must
// either succeed or fail with tandem::Error (C API: a status); anything else (another
// exception type, a crash, a sanitizer report) fails the run. Deterministic for a seed.
#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <random>
#include <string>
#include <typeinfo>
#include <vector>

#include "tandem/manifest.hpp"
#include "tandem/tandem.hpp"
#include "tandem/tandem_c.h"
#include "tandem/text.hpp"

namespace fs = std::filesystem;

namespace {

std::string ReadFile(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void WriteFile(const fs::path& p, const std::string& data) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
}

// Values that make readers misbehave when they trust them.
const char* const kNastyJson[] = {
    "-1", "0", "1", "2", "4096", "65536", "2147483647", "2147483648", "-2147483649",
    "9223372036854775807", "18446744073709551616", "1e308", "-1e308", "1.5", "NaN",
    "null", "true", "\"\"", "\"../x\"", "\"/etc/passwd\"", "[]", "{}", "[1,2,3]",
    "\"\\u0000\"", "\"\xff\xfe\"", "\"large.onnx\"", "\"float16\"", "\"bfloat16\"",
    // output names a graph has: a router score named after another output, or the other router
    "\"logits\"", "\"router_score_greedy\"", "\"router_score_sampled\"", "\"present.0.key\""};

// The end of the JSON value starting at `begin` (a string, number, literal, array or object):
// the position of the ',' or closing bracket that ends it, or text.size().
size_t JsonValueEnd(const std::string& text, size_t begin) {
  size_t end = begin;
  int depth = 0;
  bool in_string = false;
  for (; end < text.size(); ++end) {
    const char c = text[end];
    if (in_string) {
      if (c == '\\') ++end;
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') in_string = true;
    else if (c == '[' || c == '{') ++depth;
    else if ((c == ']' || c == '}') && depth-- == 0) break;
    else if (c == ',' && depth == 0) break;
  }
  return end;
}

class Mutator {
 public:
  explicit Mutator(uint64_t seed) : rng_(seed) {}

  size_t Below(size_t n) { return n == 0 ? 0 : std::uniform_int_distribution<size_t>(0, n - 1)(rng_); }

  // Random byte-level damage: flips, overwrites, inserts, deletions, truncation, repeats.
  std::string Bytes(std::string data) {
    const int edits = 1 + static_cast<int>(Below(4));
    for (int e = 0; e < edits; ++e) {
      const size_t n = data.size();
      switch (Below(7)) {
        case 0:  // flip a bit
          if (n) data[Below(n)] ^= static_cast<char>(1u << Below(8));
          break;
        case 1:  // overwrite a run with random bytes
          for (size_t i = Below(n), k = 1 + Below(16); n && k-- && i < n; ++i) data[i] = static_cast<char>(Below(256));
          break;
        case 2:  // insert random bytes
          data.insert(Below(n + 1), std::string(1 + Below(8), static_cast<char>(Below(256))));
          break;
        case 3:  // delete a run
          if (n) data.erase(Below(n), 1 + Below(64));
          break;
        case 4:  // truncate
          data.resize(Below(n + 1));
          break;
        case 5:  // repeat a chunk
          if (n) {
            const size_t at = Below(n);
            data.insert(Below(n), data.substr(at, 1 + Below(64)));
          }
          break;
        default:  // rewrite a run of decimal digits in place: an external-data offset or length
          Digits(data);
      }
    }
    return data;
  }

  // Rewrites the digits of one run of ASCII digits, keeping its length (so the protobuf's
  // framing stays valid and the value reaches the external-data checks and ONNX Runtime):
  // external data offsets and lengths are decimal strings, possibly into another graph's file.
  void Digits(std::string& data) {
    std::vector<size_t> runs;
    for (size_t i = 0; i < data.size(); ++i)
      if (std::isdigit(static_cast<unsigned char>(data[i])) && (i == 0 || !std::isdigit(static_cast<unsigned char>(data[i - 1]))))
        runs.push_back(i);
    if (runs.empty()) return;
    const bool nines = Below(3) == 0;  // the largest value of that many digits: past any file's end
    for (size_t i = runs[Below(runs.size())]; i < data.size() && std::isdigit(static_cast<unsigned char>(data[i])); ++i)
      data[i] = nines ? '9' : static_cast<char>('0' + Below(10));
  }

  // JSON-aware damage: replace a value (after a ':' or inside a list) with a nasty one, or
  // delete a "key": value pair; falls back to byte damage now and then.
  std::string Json(std::string text) {
    if (Below(4) == 0) return Bytes(std::move(text));
    const int edits = 1 + static_cast<int>(Below(3));
    for (int e = 0; e < edits && !text.empty(); ++e) {
      std::vector<size_t> starts;  // positions right after ':' or '[' or ','
      for (size_t i = 0; i < text.size(); ++i)
        if (text[i] == ':' || text[i] == '[' || text[i] == ',') starts.push_back(i + 1);
      if (starts.empty()) break;
      size_t begin = starts[Below(starts.size())];
      while (begin < text.size() && text[begin] == ' ') ++begin;
      const size_t end = JsonValueEnd(text, begin);
      text.replace(begin, end - begin, kNastyJson[Below(std::size(kNastyJson))]);
    }
    return text;
  }

 private:
  std::mt19937_64 rng_;
};


// Components of tokenizer.json a mutation swaps in: every supported type with odd settings,
// unsupported types, regexes PCRE2 refuses or struggles with, bad ids and nesting.
const char* const kTokenizerParts[][2] = {
    {"normalizer", R"({"type":"Sequence","normalizers":[{"type":"NFKC"},{"type":"Lowercase"},{"type":"Strip","strip_left":true,"strip_right":false},{"type":"StripAccents"},{"type":"Nmt"}]})"},
    {"normalizer", R"({"type":"Replace","pattern":{"Regex":"(a|aa)+$"},"content":""})"},
    {"normalizer", R"({"type":"Replace","pattern":{"String":""},"content":"\u2581"})"},
    {"normalizer", R"({"type":"Sequence","normalizers":[{"type":"Prepend","prepend":"\u2581"},{"type":"Replace","pattern":{"String":" "},"content":"\u2581"},{"type":"NFD"},{"type":"ByteLevel"}]})"},
    {"normalizer", R"({"type":"Precompiled","precompiled_charsmap":"AAAA"})"},
    {"normalizer", R"({"type":"Strip","strip_left":true,"strip_right":true})"},
    {"pre_tokenizer", R"({"type":"Split","pattern":{"Regex":"(a+)+b"},"behavior":"Isolated","invert":false})"},
    {"pre_tokenizer", R"({"type":"Split","pattern":{"Regex":"x*|\\s*"},"behavior":"MergedWithNext","invert":true})"},
    {"pre_tokenizer", R"({"type":"Split","pattern":{"Regex":"\\p{Foo}"},"behavior":"Removed","invert":false})"},
    {"pre_tokenizer", R"({"type":"Split","pattern":{"Regex":"(?<=a+)b|(?i)\u00df|["},"behavior":"Contiguous","invert":false})"},
    {"pre_tokenizer", R"({"type":"Split","pattern":{"String":""},"behavior":"MergedWithPrevious","invert":false})"},
    {"pre_tokenizer", R"({"type":"Metaspace","replacement":"ab","prepend_scheme":"sometimes","split":true})"},
    {"pre_tokenizer", R"({"type":"Metaspace","replacement":"\u2581","prepend_scheme":"first","split":false})"},
    {"pre_tokenizer", R"({"type":"Sequence","pretokenizers":[{"type":"Digits","individual_digits":true},{"type":"WhitespaceSplit"},{"type":"CharDelimiterSplit","delimiter":"e"},{"type":"ByteLevel","add_prefix_space":true,"use_regex":true}]})"},
    {"pre_tokenizer", R"({"type":"Sequence","pretokenizers":[{"type":"Sequence","pretokenizers":[{"type":"Sequence","pretokenizers":[{"type":"Sequence","pretokenizers":[{"type":"Sequence","pretokenizers":[{"type":"Sequence","pretokenizers":[{"type":"Sequence","pretokenizers":[{"type":"Sequence","pretokenizers":[{"type":"Sequence","pretokenizers":[{"type":"Sequence","pretokenizers":[{"type":"Sequence","pretokenizers":[{"type":"Sequence","pretokenizers":[{"type":"Sequence","pretokenizers":[{"type":"Sequence","pretokenizers":[{"type":"Sequence","pretokenizers":[{"type":"Sequence","pretokenizers":[{"type":"Sequence","pretokenizers":[]}]}]}]}]}]}]}]}]}]}]}]}]}]}]}]}]})"},
    {"pre_tokenizer", R"({"type":"Whitespace"})"},
    {"decoder", R"({"type":"Sequence","decoders":[{"type":"Replace","pattern":{"Regex":"\u2581+"},"content":" "},{"type":"ByteFallback"},{"type":"Fuse"},{"type":"Strip","content":" ","start":1000000000000,"stop":99}]})"},
    {"decoder", R"({"type":"Strip","content":"","start":-1,"stop":1})"},
    {"decoder", R"({"type":"Metaspace","replacement":"\u2581","prepend_scheme":"never"})"},
    {"decoder", R"({"type":"CTC"})"},
    {"post_processor", R"({"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"X","type_id":0}},{"Sequence":{"id":"A","type_id":0}}],"pair":[],"special_tokens":{"X":{"id":"X","ids":[4294967295,-1],"tokens":["a"]}}})"},
    {"post_processor", R"({"type":"TemplateProcessing","single":[{"Sequence":{"id":"B","type_id":0}},{"SpecialToken":{"id":"missing","type_id":0}}],"special_tokens":{}})"},
    {"post_processor", R"({"type":"Sequence","processors":[{"type":"ByteLevel"},{"type":"BertProcessing","sep":["a",1],"cls":["b"]}]})"},
    {"added_tokens", R"([{"id":0,"content":"","special":true},{"id":1,"content":"ab","lstrip":true,"rstrip":true,"single_word":true},{"id":2,"content":"ab","normalized":false},{"id":3,"content":" ","normalized":true,"special":true}])"},
    {"added_tokens", R"([{"id":5,"content":"\u0120\u0120","normalized":true},{"id":6,"content":"<|x|>","lstrip":true,"special":true},{"id":7,"content":"<|x|>y","rstrip":true}])"},
};

// Loads the (damaged) tokenizer.json and, when it loads, encodes and decodes with it: every
// failure must be a tandem::Error. Returns whether it loaded.
bool FuzzTokenizer(const fs::path& path, Mutator& mutate) {
  std::shared_ptr<const tandem::Tokenizer> tok;
  try {
    tok = tandem::Tokenizer::Load(path.string());
  } catch (const tandem::Error&) {
    return false;
  }
  const std::string texts[] = {"", "hello world  <|endoftext|> ab", std::string(300, ' ') + "x\n\n\t",
                               "Gr\xC3\xBC\xC3\x9F" "e \xE4\xBD\xA0\xE5\xA5\xBD \xF0\x9F\x8E\x89 e\xCC\x81 12345",
                               "aaaaaaaaaaaaaaaaaaaaaaaaac", "\xE2\x96\x81x \xE2\x96\x81", "bad \xFF utf8"};
  for (const std::string& t : texts) {
    for (bool add : {true, false}) {
      try {
        const std::vector<int64_t> ids = tok->Encode(t, add);
        tok->Decode(ids, add);
      } catch (const tandem::Error&) {
      }
    }
  }
  std::vector<int64_t> ids;
  for (size_t k = 0, n = 1 + mutate.Below(24); k < n; ++k)
    ids.push_back(static_cast<int64_t>(mutate.Below(static_cast<size_t>(tok->vocab_size()) + 8)));
  for (bool skip : {true, false}) tok->Decode(ids, skip);
  // the detokenizer over the same ids in chunks, with stop strings made of its own text
  const std::string whole = tok->Decode(ids);
  std::vector<std::string> stop{"\n\n"};
  if (!whole.empty()) {
    size_t at = mutate.Below(whole.size());
    while (at > 0 && (static_cast<unsigned char>(whole[at]) & 0xC0) == 0x80) --at;
    size_t end = std::min(whole.size(), at + 1 + mutate.Below(4));
    while (end < whole.size() && (static_cast<unsigned char>(whole[end]) & 0xC0) == 0x80) ++end;
    stop.push_back(whole.substr(at, end - at));
  }
  tandem::Detokenizer detok(tok, stop, mutate.Below(2) == 0);
  std::string text;
  for (size_t i = 0; i < ids.size();) {
    const size_t n = 1 + mutate.Below(3);
    text += detok.Push(std::span<const int64_t>(ids).subspan(i, std::min(n, ids.size() - i)));
    i += n;
  }
  text += detok.Finish();
  if (text != detok.text()) throw std::logic_error("the detokenizer's pieces do not add up to its text");
  return true;
}

// Damage of tokenizer.json: a component swapped for one above, or the generic edits.
std::string MutateTokenizer(const std::string& text, Mutator& mutate) {
  if (mutate.Below(2) == 0) return mutate.Json(text);
  const auto& [key, value] = kTokenizerParts[mutate.Below(std::size(kTokenizerParts))];
  const std::string needle = std::string("\"") + key + "\":";
  size_t at = text.find(needle);
  if (at == std::string::npos) return mutate.Json(text);
  at += needle.size();
  while (at < text.size() && text[at] == ' ') ++at;
  return text.substr(0, at) + value + text.substr(JsonValueEnd(text, at));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::cerr << "usage: " << argv[0] << " SEED_BUNDLE WORK_DIR ITERATIONS [RNG_SEED]\n";
    return 2;
  }
  const fs::path seed_dir = argv[1], work = argv[2];
  const long iterations = std::stol(argv[3]);
  Mutator mutate(argc > 4 ? std::stoull(argv[4]) : 1);
  std::vector<fs::path> graphs;
  for (const auto& entry : fs::directory_iterator(seed_dir))
    if (entry.path().extension() == ".onnx") graphs.push_back(entry.path().filename());
  if (!fs::is_regular_file(seed_dir / "tandem.json") || graphs.empty()) {
    std::cerr << seed_dir << " is not a bundle with graphs\n";
    return 2;
  }
  std::sort(graphs.begin(), graphs.end());
  const bool has_tokenizer = fs::is_regular_file(seed_dir / "tokenizer.json");
  const fs::path dir = work / "case";
  long loaded = 0, refused = 0, c_refused = 0, tok_loaded = 0, tok_refused = 0, routed = 0;
  for (long it = 0; it < iterations; ++it) {
    fs::remove_all(dir);
    fs::create_directories(dir);
    for (const auto& entry : fs::directory_iterator(seed_dir))
      if (entry.is_regular_file()) fs::copy_file(entry.path(), dir / entry.path().filename());
    const size_t pick = mutate.Below(10);
    const bool tokenizer = has_tokenizer && pick >= 7;
    const bool manifest = pick < (has_tokenizer ? 5 : 7);
    const fs::path target = tokenizer ? dir / "tokenizer.json"
                            : manifest ? dir / "tandem.json"
                                       : dir / graphs[mutate.Below(graphs.size())];
    const std::string original = ReadFile(target);
    WriteFile(target, tokenizer ? MutateTokenizer(original, mutate)
                      : manifest ? mutate.Json(original)
                                 : mutate.Bytes(original));
    if (tokenizer) {
      try {
        (FuzzTokenizer(target, mutate) ? tok_loaded : tok_refused) += 1;
      } catch (const std::exception& e) {
        std::cerr << "iteration " << it << " (tokenizer.json): unexpected " << typeid(e).name() << ": " << e.what()
                  << "\n";
        WriteFile(work / "crash-input", ReadFile(target));
        return 1;
      }
    }
    try {
      tandem::ReadManifest(dir.string());
      tandem::ModelOptions options;
      options.bundle_path = dir.string();
      options.intra_op_threads = 1;
      auto model = tandem::Model::Load(options);
      ++loaded;
      if (model->vocab_size() > 0) {  // a loaded model must also generate or refuse cleanly
        tandem::GenerateOptions g;
        g.max_new_tokens = 3;
        g.mode = tandem::Mode::kLarge;
        tandem::Generator(model, {1, 2, 3}, g).Run();
        // the drafters with their routers: adaptive drafting reads the greedy router's score
        // output when greedy, the sampled router's when sampling
        for (const tandem::Mode mode : {tandem::Mode::kSpeed, tandem::Mode::kVanilla}) {
          if (!model->has_router(mode)) continue;
          for (const bool sample : {false, true}) {
            g.mode = mode;
            g.adaptive = true;
            g.max_block_length = 2;
            g.do_sample = sample;
            tandem::Generator(model, {1, 2, 3}, g).Run();
            ++routed;
          }
        }
      }
    } catch (const tandem::Error&) {
      ++refused;
    } catch (const std::exception& e) {
      std::cerr << "iteration " << it << " (" << target.filename() << "): unexpected " << typeid(e).name()
                << ": " << e.what() << "\n";
      WriteFile(work / "crash-input", ReadFile(target));
      return 1;
    }
    tandem_model* model = nullptr;  // the C API never throws: a status either way
    const tandem_status st = tandem_model_load(dir.string().c_str(), 1, nullptr, &model);
    if (st == TANDEM_OK) tandem_model_free(model);
    else ++c_refused;
  }
  fs::remove_all(dir);
  std::cout << iterations << " inputs: " << loaded << " loaded, " << refused << " refused (C API: " << c_refused
            << " refused); tokenizer.json: " << tok_loaded << " loaded, " << tok_refused << " refused; "
            << routed << " adaptive runs\n";
  return 0;
}
