#include "tokenizer_components.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>

#include "tandem/tandem.hpp"
#include "tokenizer_bpe.hpp"
#include "tokenizer_regex.hpp"
#include "tokenizer_unicode.hpp"

namespace tandem::detail {
namespace {

using nlohmann::json;
constexpr int kMaxDepth = 16;  // nested Sequences

[[noreturn]] void Fail(const std::string& where, const std::string& what) {
  throw Error(ErrorCode::kBundle, where + ": " + what);
}

const json& Field(const json& j, const char* key, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end()) Fail(where, std::string("missing \"") + key + "\"");
  return *it;
}

template <typename T>
T As(const json& v, const std::string& where, const char* key) {
  try {
    return v.get<T>();
  } catch (const json::exception&) {
    Fail(where, std::string("\"") + key + "\" has the wrong type");
  }
}

template <typename T>
T Opt(const json& j, const char* key, T fallback, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  return As<T>(*it, where, key);
}

std::string TypeOf(const json& j, const std::string& where) {
  if (!j.is_object()) Fail(where, "must be an object");
  return As<std::string>(Field(j, "type", where), where, "type");
}

[[noreturn]] void Refuse(const std::string& where, const std::string& kind, const std::string& type,
                         const std::string& supported) {
  Fail(where, "the " + kind + " \"" + type + "\" is not supported by tandem's tokenizer (supported: " + supported +
                  "); use a model whose tokenizer.json has none of it");
}

uint32_t OneChar(const json& j, const char* key, const std::string& where) {
  const std::string s = As<std::string>(Field(j, key, where), where, key);
  size_t i = 0;
  if (s.empty()) Fail(where, std::string("\"") + key + "\" must be one character");
  const uint32_t c = text::NextChar(s, i);
  if (i != s.size()) Fail(where, std::string("\"") + key + "\" must be one character");
  return c;
}

std::string Utf8Of(uint32_t c) {
  std::string s;
  text::AppendUtf8(s, c);
  return s;
}

// {"String": "..."} or {"Regex": "..."} of Split and Replace.
std::shared_ptr<const Regex> PatternOf(const json& j, const std::string& where) {
  const json& p = Field(j, "pattern", where);
  if (p.is_object() && p.size() == 1 && p.contains("String"))
    return Regex::Literal(As<std::string>(p.at("String"), where, "String"), where);
  if (p.is_object() && p.size() == 1 && p.contains("Regex"))
    return Regex::Compile(As<std::string>(p.at("Regex"), where, "Regex"), where);
  Fail(where, "\"pattern\" must be {\"String\": ...} or {\"Regex\": ...}");
}

// ----------------------------------------------------------------------------- normalizers

class NormalizerSequence : public Normalizer {
 public:
  std::vector<std::unique_ptr<Normalizer>> steps;
  void Apply(std::string& s, bool& lead_deleted) const override {
    for (const auto& n : steps) n->Apply(s, lead_deleted);
  }
};

class PrependNormalizer : public Normalizer {
 public:
  std::string prefix;
  void Apply(std::string& s, bool&) const override {
    if (!s.empty()) s.insert(0, prefix);
  }
};

class ReplaceNormalizer : public Normalizer {
 public:
  std::shared_ptr<const Regex> pattern;
  std::string content;
  void Apply(std::string& s, bool& lead_deleted) const override {
    std::vector<Span> spans;
    FindMatches(*pattern, s, spans);
    if (spans.size() == 1 && !spans[0].match) return;
    std::string out;
    out.reserve(s.size());
    for (const Span& sp : spans) {
      if (sp.match) out += content;
      else out.append(s, sp.start, sp.end - sp.start);
    }
    if (!spans.empty() && spans[0].match && spans[0].end > 0 && content.empty()) lead_deleted = true;
    s = std::move(out);
  }
};

class UnicodeNormalizer : public Normalizer {
 public:
  text::NormalForm form;
  explicit UnicodeNormalizer(text::NormalForm f) : form(f) {}
  void Apply(std::string& s, bool&) const override { s = text::Normalize(s, form); }
};

class LowercaseNormalizer : public Normalizer {
 public:
  void Apply(std::string& s, bool&) const override { s = text::Lowercase(s); }
};

class StripNormalizer : public Normalizer {
 public:
  bool left = true, right = true;
  void Apply(std::string& s, bool& lead_deleted) const override {
    size_t begin = 0, end = s.size();
    if (left) {
      while (begin < end) {
        size_t i = begin;
        if (!text::IsWhitespace(text::NextChar(s, i))) break;
        begin = i;
      }
    }
    if (right) {
      while (end > begin) {
        size_t start = end - 1;
        while (start > begin && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
        size_t i = start;
        if (!text::IsWhitespace(text::NextChar(s, i))) break;
        end = start;
      }
    }
    if (begin > 0) lead_deleted = true;
    s = s.substr(begin, end - begin);
  }
};

class StripAccentsNormalizer : public Normalizer {
 public:
  void Apply(std::string& s, bool& lead_deleted) const override {
    std::string out = text::StripMarks(s);
    if (!s.empty() && (out.empty() || text::CharLen(static_cast<unsigned char>(s[0])) > out.size() ||
                       out.compare(0, text::CharLen(static_cast<unsigned char>(s[0])), s, 0,
                                   text::CharLen(static_cast<unsigned char>(s[0]))) != 0))
      lead_deleted = true;
    s = std::move(out);
  }
};

class NmtNormalizer : public Normalizer {
 public:
  void Apply(std::string& s, bool& lead_deleted) const override {
    std::string out;
    out.reserve(s.size());
    bool first = true;
    for (size_t i = 0; i < s.size();) {
      const uint32_t c = text::NextChar(s, i);
      const bool drop = (c >= 0x01 && c <= 0x08) || c == 0x0B || (c >= 0x0E && c <= 0x1F) || c == 0x7F ||
                        c == 0x8F || c == 0x9F;
      if (drop) {
        if (first) lead_deleted = true;
      } else {
        const bool space = c == 0x09 || c == 0x0A || c == 0x0C || c == 0x0D || c == 0x1680 ||
                           (c >= 0x200B && c <= 0x200F) || c == 0x2028 || c == 0x2029 || c == 0x2581 ||
                           c == 0xFEFF || c == 0xFFFD;
        text::AppendUtf8(out, space ? ' ' : c);
      }
      first = false;
    }
    s = std::move(out);
  }
};

class ByteLevelNormalizer : public Normalizer {
 public:
  void Apply(std::string& s, bool&) const override {
    std::string out;
    out.reserve(s.size() * 2);
    AppendByteLevel(out, s);
    s = std::move(out);
  }
};

// ------------------------------------------------------------------------- pre-tokenizers

enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

Behavior ParseBehavior(const json& j, const std::string& where) {
  const std::string b = As<std::string>(Field(j, "behavior", where), where, "behavior");
  if (b == "Removed") return Behavior::kRemoved;
  if (b == "Isolated") return Behavior::kIsolated;
  if (b == "MergedWithPrevious") return Behavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return Behavior::kMergedWithNext;
  if (b == "Contiguous") return Behavior::kContiguous;
  Fail(where, "unknown split behavior \"" + b + "\"");
}

// NormalizedString::split: the kept [start, end) ranges for `spans` under `behavior`.
void ApplyBehavior(const std::vector<Span>& spans, Behavior behavior, std::vector<std::pair<size_t, size_t>>& out) {
  out.clear();
  switch (behavior) {
    case Behavior::kIsolated:
      for (const Span& s : spans) out.emplace_back(s.start, s.end);
      break;
    case Behavior::kRemoved:
      for (const Span& s : spans)
        if (!s.match) out.emplace_back(s.start, s.end);
      break;
    case Behavior::kContiguous: {
      bool previous = false;
      for (const Span& s : spans) {
        if (s.match == previous && !out.empty()) out.back().second = s.end;
        else out.emplace_back(s.start, s.end);
        previous = s.match;
      }
      break;
    }
    case Behavior::kMergedWithPrevious: {
      bool previous = false;
      for (const Span& s : spans) {
        if (s.match && !previous && !out.empty()) out.back().second = s.end;
        else out.emplace_back(s.start, s.end);
        previous = s.match;
      }
      break;
    }
    case Behavior::kMergedWithNext: {
      bool previous = false;
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->match && !previous && !out.empty()) out.back().first = it->start;
        else out.emplace_back(it->start, it->end);
        previous = it->match;
      }
      std::reverse(out.begin(), out.end());
      break;
    }
  }
}

// Splits every piece with `find` (text -> spans) under `behavior`; drops empty pieces.
template <typename Find>
void SplitPieces(std::vector<Piece>& pieces, Behavior behavior, Find&& find) {
  thread_local std::vector<Span> spans;
  thread_local std::vector<std::pair<size_t, size_t>> ranges;
  std::vector<Piece> out;
  out.reserve(pieces.size() * 2);
  for (Piece& p : pieces) {
    find(p.text, spans);
    ApplyBehavior(spans, behavior, ranges);
    for (const auto& [s, e] : ranges) {
      if (s == e) continue;
      if (s == 0 && e == p.text.size()) out.push_back(std::move(p));
      else out.push_back({p.text.substr(s, e - s), p.at_origin && s == 0});
    }
  }
  pieces = std::move(out);
}

// Spans of single characters for which `pred` holds (HF's Pattern for Fn(char) -> bool).
template <typename Pred>
void CharMatches(const std::string& text, Pred&& pred, std::vector<Span>& out) {
  out.clear();
  if (text.empty()) {
    out.push_back({0, 0, false});
    return;
  }
  size_t last = 0;
  for (size_t i = 0; i < text.size();) {
    const size_t b = i;
    const uint32_t c = text::NextChar(text, i);
    if (pred(c)) {
      if (last < b) out.push_back({last, b, false});
      out.push_back({b, i, true});
      last = i;
    }
  }
  if (last < text.size()) out.push_back({last, text.size(), false});
}

// The GPT-2 pattern of the ByteLevel pre-tokenizer.
const Regex& Gpt2Regex() {
  static const std::shared_ptr<const Regex> re =
      Regex::Compile(R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)", "ByteLevel");
  return *re;
}

class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  bool add_prefix_space = true, use_regex = true, deferred = false;
  void Apply(std::vector<Piece>& pieces) const override {
    if (add_prefix_space)
      for (Piece& p : pieces)
        if (p.text.empty() || p.text[0] != ' ') p.text.insert(0, 1, ' ');
    if (use_regex)
      SplitPieces(pieces, Behavior::kIsolated,
                  [](const std::string& t, std::vector<Span>& spans) { FindMatches(Gpt2Regex(), t, spans); });
    if (!deferred) {
      for (Piece& p : pieces) {
        std::string mapped;
        mapped.reserve(p.text.size() * 2);
        AppendByteLevel(mapped, p.text);
        p.text = std::move(mapped);
      }
    }
  }
  bool DeferByteLevel() override { return deferred = true; }
};

class SplitPreTokenizer : public PreTokenizer {
 public:
  std::shared_ptr<const Regex> pattern;
  Behavior behavior = Behavior::kIsolated;
  bool invert = false;
  void Apply(std::vector<Piece>& pieces) const override {
    SplitPieces(pieces, behavior, [this](const std::string& t, std::vector<Span>& spans) {
      FindMatches(*pattern, t, spans);
      if (invert)
        for (Span& s : spans) s.match = !s.match;
    });
  }
};

class DigitsPreTokenizer : public PreTokenizer {
 public:
  bool individual = false;
  void Apply(std::vector<Piece>& pieces) const override {
    SplitPieces(pieces, individual ? Behavior::kIsolated : Behavior::kContiguous,
                [](const std::string& t, std::vector<Span>& spans) { CharMatches(t, text::IsNumeric, spans); });
  }
};

class CharSplitPreTokenizer : public PreTokenizer {  // WhitespaceSplit, CharDelimiterSplit
 public:
  bool whitespace = true;
  uint32_t delimiter = 0;
  void Apply(std::vector<Piece>& pieces) const override {
    SplitPieces(pieces, Behavior::kRemoved, [this](const std::string& t, std::vector<Span>& spans) {
      CharMatches(t, [this](uint32_t c) { return whitespace ? text::IsWhitespace(c) : c == delimiter; }, spans);
    });
  }
};

enum class PrependScheme { kFirst, kNever, kAlways };

PrependScheme ParsePrependScheme(const json& j, const std::string& where) {
  PrependScheme scheme = PrependScheme::kAlways;
  if (j.contains("prepend_scheme") && !j.at("prepend_scheme").is_null()) {
    const std::string s = As<std::string>(j.at("prepend_scheme"), where, "prepend_scheme");
    if (s == "first") scheme = PrependScheme::kFirst;
    else if (s == "never") scheme = PrependScheme::kNever;
    else if (s == "always") scheme = PrependScheme::kAlways;
    else Fail(where, "unknown prepend_scheme \"" + s + "\" (first, never, always)");
  }
  if (j.contains("add_prefix_space") && !j.at("add_prefix_space").is_null() &&
      !As<bool>(j.at("add_prefix_space"), where, "add_prefix_space")) {
    if (scheme != PrependScheme::kNever) Fail(where, "add_prefix_space does not match declared prepend_scheme");
    scheme = PrependScheme::kNever;
  }
  return scheme;
}

class MetaspacePreTokenizer : public PreTokenizer {
 public:
  uint32_t replacement = 0x2581;
  std::string rep;
  PrependScheme scheme = PrependScheme::kAlways;
  bool split = true;
  void Apply(std::vector<Piece>& pieces) const override {
    for (Piece& p : pieces) {
      if (p.text.find(' ') != std::string::npos) {
        std::string out;
        out.reserve(p.text.size() + 8);
        for (char c : p.text) {
          if (c == ' ') out += rep;
          else out += c;
        }
        p.text = std::move(out);
      }
      const bool starts = p.text.compare(0, rep.size(), rep) == 0;
      if (!starts && (scheme == PrependScheme::kAlways || (scheme == PrependScheme::kFirst && p.at_origin)))
        p.text.insert(0, rep);
    }
    if (split)
      SplitPieces(pieces, Behavior::kMergedWithNext, [this](const std::string& t, std::vector<Span>& spans) {
        CharMatches(t, [this](uint32_t c) { return c == replacement; }, spans);
      });
    else
      std::erase_if(pieces, [](const Piece& p) { return p.text.empty(); });
  }
};

class PreTokenizerSequence : public PreTokenizer {
 public:
  std::vector<std::unique_ptr<PreTokenizer>> steps;
  void Apply(std::vector<Piece>& pieces) const override {
    for (const auto& s : steps) s->Apply(pieces);
  }
  bool DeferByteLevel() override { return !steps.empty() && steps.back()->DeferByteLevel(); }
};

// ------------------------------------------------------------------------------ decoders

class ByteLevelDecoder : public Decoder {
 public:
  void Apply(std::vector<std::string>& tokens) const override {
    std::string bytes;
    for (const std::string& t : tokens) {
      const size_t mark = bytes.size();
      bool all = true;
      for (size_t i = 0; i < t.size() && all;) {
        const int b = ByteLevelByte(text::NextChar(t, i));
        if (b < 0) all = false;
        else bytes += static_cast<char>(b);
      }
      if (!all) {
        bytes.resize(mark);
        bytes += t;
      }
    }
    tokens.assign(1, text::Utf8Lossy(bytes));
  }
};

class MetaspaceDecoder : public Decoder {
 public:
  uint32_t replacement = 0x2581;
  PrependScheme scheme = PrependScheme::kAlways;
  void Apply(std::vector<std::string>& tokens) const override {
    for (size_t k = 0; k < tokens.size(); ++k) {
      const std::string& t = tokens[k];
      std::string out;
      out.reserve(t.size());
      for (size_t i = 0; i < t.size();) {
        const size_t b = i;
        const uint32_t c = text::NextChar(t, i);
        if (c == replacement) {
          if (!(k == 0 && scheme != PrependScheme::kNever)) out += ' ';
        } else {
          out.append(t, b, i - b);
        }
      }
      tokens[k] = std::move(out);
    }
  }
};

class ReplaceDecoder : public Decoder {
 public:
  std::shared_ptr<const Regex> pattern;
  std::string content;
  void Apply(std::vector<std::string>& tokens) const override {
    std::vector<Span> spans;
    for (std::string& t : tokens) {
      FindMatches(*pattern, t, spans);
      std::string out;
      for (const Span& s : spans) {
        if (s.match) out += content;
        else out.append(t, s.start, s.end - s.start);
      }
      t = std::move(out);
    }
  }
};

class ByteFallbackDecoder : public Decoder {
 public:
  void Apply(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    out.reserve(tokens.size());
    std::string pending;
    auto flush = [&] {
      if (pending.empty()) return;
      if (text::FirstInvalidUtf8(pending) == text::kValid) out.push_back(pending);
      else
        for (size_t i = 0; i < pending.size(); ++i) out.emplace_back("\xEF\xBF\xBD");
      pending.clear();
    };
    for (std::string& t : tokens) {
      int byte = -1;
      if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>') byte = ParseHexByte(t.substr(3, 2));
      if (byte >= 0) {
        pending += static_cast<char>(byte);
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    tokens = std::move(out);
  }

 private:
  // Rust's u8::from_str_radix(s, 16) for a two-byte s: an optional '+' then hex digits.
  static int ParseHexByte(const std::string& s) {
    auto hex = [](char c) {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      return -1;
    };
    if (s[0] == '+') return hex(s[1]);
    const int hi = hex(s[0]), lo = hex(s[1]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
  }
};

class FuseDecoder : public Decoder {
 public:
  void Apply(std::vector<std::string>& tokens) const override {
    std::string all;
    for (const std::string& t : tokens) all += t;
    tokens.assign(1, std::move(all));
  }
};

class StripDecoder : public Decoder {
 public:
  uint32_t content = ' ';
  size_t start = 0, stop = 0;
  void Apply(std::vector<std::string>& tokens) const override {
    std::vector<size_t> bounds;  // byte offset of each character, then the end
    for (std::string& t : tokens) {
      bounds.clear();
      std::vector<uint32_t> chars;
      for (size_t i = 0; i < t.size();) {
        bounds.push_back(i);
        chars.push_back(text::NextChar(t, i));
      }
      bounds.push_back(t.size());
      size_t cut_start = 0;
      for (size_t i = 0; i < chars.size() && i < start; ++i) {
        if (chars[i] != content) break;
        cut_start = i + 1;
      }
      size_t cut_stop = chars.size();
      for (size_t i = 0; i < stop && i < chars.size(); ++i) {
        const size_t index = chars.size() - i - 1;
        if (chars[index] != content) break;
        cut_stop = index;
      }
      if (cut_stop < cut_start) cut_stop = cut_start;  // HF panics here; keep nothing instead
      t = t.substr(bounds[cut_start], bounds[cut_stop] - bounds[cut_start]);
    }
  }
};

class DecoderSequence : public Decoder {
 public:
  std::vector<std::unique_ptr<Decoder>> steps;
  void Apply(std::vector<std::string>& tokens) const override {
    for (const auto& d : steps) d->Apply(tokens);
  }
};

// ------------------------------------------------------------------------ post-processors

int32_t TokenId(const json& v, const std::string& where) {
  if (!v.is_number_integer()) Fail(where, "a token id must be an integer");
  const int64_t id = v.get<int64_t>();
  if (id < 0 || id >= (int64_t{1} << 24)) Fail(where, "token id " + std::to_string(id) + " is out of range");
  return static_cast<int32_t>(id);
}

class TemplatePostProcessor : public PostProcessor {
 public:
  struct Item {
    bool sequence;
    std::vector<int32_t> ids;  // a special token's ids
  };
  std::vector<Item> single;
  void Apply(std::vector<int32_t>& ids, bool add_special_tokens) const override {
    if (!add_special_tokens) return;
    std::vector<int32_t> out;
    out.reserve(ids.size() + 4);
    for (const Item& item : single) {
      if (item.sequence) out.insert(out.end(), ids.begin(), ids.end());
      else out.insert(out.end(), item.ids.begin(), item.ids.end());
    }
    ids = std::move(out);
  }
};

class NoPostProcessor : public PostProcessor {  // ByteLevel: offsets only
 public:
  void Apply(std::vector<int32_t>&, bool) const override {}
};

class PostProcessorSequence : public PostProcessor {
 public:
  std::vector<std::unique_ptr<PostProcessor>> steps;
  void Apply(std::vector<int32_t>& ids, bool add_special_tokens) const override {
    for (const auto& p : steps) p->Apply(ids, add_special_tokens);
  }
};

template <typename T, typename Make>
std::unique_ptr<T> SequenceOf(const json& j, const char* key, const std::string& where, int depth, Make&& make,
                              std::vector<std::unique_ptr<T>>& steps) {
  if (depth >= kMaxDepth) Fail(where, "Sequences are nested too deeply");
  const json& list = Field(j, key, where);
  if (!list.is_array()) Fail(where, std::string("\"") + key + "\" must be a list");
  for (size_t i = 0; i < list.size(); ++i) steps.push_back(make(list[i], where + "." + key + "[" + std::to_string(i) + "]", depth + 1));
  return nullptr;
}

}  // namespace

std::unique_ptr<Normalizer> MakeNormalizer(const json& j, const std::string& where, int depth) {
  const std::string type = TypeOf(j, where);
  if (type == "Sequence") {
    auto seq = std::make_unique<NormalizerSequence>();
    SequenceOf<Normalizer>(j, "normalizers", where, depth, MakeNormalizer, seq->steps);
    return seq;
  }
  if (type == "Prepend") {
    auto n = std::make_unique<PrependNormalizer>();
    n->prefix = As<std::string>(Field(j, "prepend", where), where, "prepend");
    return n;
  }
  if (type == "Replace") {
    auto n = std::make_unique<ReplaceNormalizer>();
    n->pattern = PatternOf(j, where);
    n->content = As<std::string>(Field(j, "content", where), where, "content");
    return n;
  }
  if (type == "NFC") return std::make_unique<UnicodeNormalizer>(text::NormalForm::kNFC);
  if (type == "NFD") return std::make_unique<UnicodeNormalizer>(text::NormalForm::kNFD);
  if (type == "NFKC") return std::make_unique<UnicodeNormalizer>(text::NormalForm::kNFKC);
  if (type == "NFKD") return std::make_unique<UnicodeNormalizer>(text::NormalForm::kNFKD);
  if (type == "Lowercase") return std::make_unique<LowercaseNormalizer>();
  if (type == "Strip") {
    auto n = std::make_unique<StripNormalizer>();
    n->left = Opt<bool>(j, "strip_left", true, where);
    n->right = Opt<bool>(j, "strip_right", true, where);
    return n;
  }
  if (type == "StripAccents") return std::make_unique<StripAccentsNormalizer>();
  if (type == "Nmt") return std::make_unique<NmtNormalizer>();
  if (type == "ByteLevel") return std::make_unique<ByteLevelNormalizer>();
  Refuse(where, "normalizer", type,
         "Sequence, Prepend, Replace, NFC, NFD, NFKC, NFKD, Lowercase, Strip, StripAccents, Nmt, ByteLevel");
}

std::unique_ptr<PreTokenizer> MakePreTokenizer(const json& j, const std::string& where, int depth) {
  const std::string type = TypeOf(j, where);
  if (type == "Sequence") {
    auto seq = std::make_unique<PreTokenizerSequence>();
    SequenceOf<PreTokenizer>(j, "pretokenizers", where, depth, MakePreTokenizer, seq->steps);
    return seq;
  }
  if (type == "ByteLevel") {
    auto p = std::make_unique<ByteLevelPreTokenizer>();
    p->add_prefix_space = Opt<bool>(j, "add_prefix_space", true, where);
    p->use_regex = Opt<bool>(j, "use_regex", true, where);
    return p;
  }
  if (type == "Split") {
    auto p = std::make_unique<SplitPreTokenizer>();
    p->pattern = PatternOf(j, where);
    p->behavior = ParseBehavior(j, where);
    p->invert = Opt<bool>(j, "invert", false, where);
    return p;
  }
  if (type == "Digits") {
    auto p = std::make_unique<DigitsPreTokenizer>();
    p->individual = Opt<bool>(j, "individual_digits", false, where);
    return p;
  }
  if (type == "Metaspace") {
    auto p = std::make_unique<MetaspacePreTokenizer>();
    p->replacement = OneChar(j, "replacement", where);
    p->rep = Utf8Of(p->replacement);
    p->scheme = ParsePrependScheme(j, where);
    p->split = Opt<bool>(j, "split", true, where);
    return p;
  }
  if (type == "WhitespaceSplit") return std::make_unique<CharSplitPreTokenizer>();
  if (type == "CharDelimiterSplit") {
    auto p = std::make_unique<CharSplitPreTokenizer>();
    p->whitespace = false;
    p->delimiter = OneChar(j, "delimiter", where);
    return p;
  }
  Refuse(where, "pre_tokenizer", type,
         "ByteLevel, Split, Metaspace, Digits, WhitespaceSplit, CharDelimiterSplit, Sequence");
}

std::unique_ptr<Decoder> MakeDecoder(const json& j, const std::string& where, int depth) {
  const std::string type = TypeOf(j, where);
  if (type == "Sequence") {
    auto seq = std::make_unique<DecoderSequence>();
    SequenceOf<Decoder>(j, "decoders", where, depth, MakeDecoder, seq->steps);
    return seq;
  }
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "Metaspace") {
    auto d = std::make_unique<MetaspaceDecoder>();
    d->replacement = OneChar(j, "replacement", where);
    d->scheme = ParsePrependScheme(j, where);
    return d;
  }
  if (type == "Replace") {
    auto d = std::make_unique<ReplaceDecoder>();
    d->pattern = PatternOf(j, where);
    d->content = As<std::string>(Field(j, "content", where), where, "content");
    return d;
  }
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Strip") {
    auto d = std::make_unique<StripDecoder>();
    d->content = OneChar(j, "content", where);
    const int64_t start = As<int64_t>(Field(j, "start", where), where, "start");
    const int64_t stop = As<int64_t>(Field(j, "stop", where), where, "stop");
    if (start < 0 || stop < 0) Fail(where, "start and stop must be >= 0");
    d->start = static_cast<size_t>(start);
    d->stop = static_cast<size_t>(stop);
    return d;
  }
  Refuse(where, "decoder", type, "ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, Sequence");
}

std::unique_ptr<PostProcessor> MakePostProcessor(const json& j, const std::string& where, int depth) {
  const std::string type = TypeOf(j, where);
  if (type == "Sequence") {
    auto seq = std::make_unique<PostProcessorSequence>();
    SequenceOf<PostProcessor>(j, "processors", where, depth, MakePostProcessor, seq->steps);
    return seq;
  }
  if (type == "ByteLevel") return std::make_unique<NoPostProcessor>();
  if (type == "TemplateProcessing") {
    auto p = std::make_unique<TemplatePostProcessor>();
    const json& tokens = j.contains("special_tokens") ? j.at("special_tokens") : json::object();
    if (!tokens.is_object()) Fail(where, "\"special_tokens\" must be an object");
    const json& single = Field(j, "single", where);
    if (!single.is_array()) Fail(where, "\"single\" must be a list of pieces");
    for (const json& piece : single) {
      if (!piece.is_object() || piece.size() != 1) Fail(where, "a template piece must be {\"Sequence\"|\"SpecialToken\": {...}}");
      if (piece.contains("Sequence")) {
        const json& s = piece.at("Sequence");
        const std::string id = s.is_object() ? Opt<std::string>(s, "id", "A", where) : "";
        if (id != "A") Fail(where, "the single-sequence template names sequence \"" + id + "\" (only A exists)");
        p->single.push_back({true, {}});
      } else if (piece.contains("SpecialToken")) {
        const json& s = piece.at("SpecialToken");
        if (!s.is_object()) Fail(where, "a SpecialToken piece must be an object");
        const std::string id = As<std::string>(Field(s, "id", where), where, "id");
        auto it = tokens.find(id);
        if (it == tokens.end()) Fail(where, "the template uses special token \"" + id + "\", missing from special_tokens");
        const json& ids = Field(*it, "ids", where);
        if (!ids.is_array()) Fail(where, "special_tokens[\"" + id + "\"].ids must be a list");
        TemplatePostProcessor::Item item{false, {}};
        for (const json& v : ids) item.ids.push_back(TokenId(v, where));
        p->single.push_back(std::move(item));
      } else {
        Fail(where, "a template piece must be {\"Sequence\"|\"SpecialToken\": {...}}");
      }
    }
    return p;
  }
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    auto p = std::make_unique<TemplatePostProcessor>();  // single: cls $A sep
    auto special = [&](const char* key) {
      const json& v = Field(j, key, where);
      if (!v.is_array() || v.size() != 2) Fail(where, std::string("\"") + key + "\" must be [token, id]");
      return TemplatePostProcessor::Item{false, {TokenId(v[1], where)}};
    };
    p->single.push_back(special("cls"));
    p->single.push_back({true, {}});
    p->single.push_back(special("sep"));
    return p;
  }
  Refuse(where, "post_processor", type,
         "TemplateProcessing, BertProcessing, RobertaProcessing, ByteLevel, Sequence");
}

}  // namespace tandem::detail
