// tandem::Tokenizer: tokenizer.json read and run as Hugging Face tokenizers runs it
// (tokenizer/mod.rs, added_vocabulary.rs): added tokens split off the raw text, the
// normalizer over the rest, normalized added tokens split off, the pre-tokenizer, the BPE
// model over each piece, the post-processor; decoding through the decoder chain.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <unordered_set>

#include "tandem/text.hpp"
#include "tokenizer_bpe.hpp"
#include "tokenizer_components.hpp"
#include "tokenizer_regex.hpp"
#include "tokenizer_unicode.hpp"

namespace tandem {
namespace {

using nlohmann::json;
using detail::BpeModel;
constexpr int64_t kMaxId = int64_t{1} << 24;  // as the bundle's vocabulary bound

[[noreturn]] void Fail(const std::string& where, const std::string& what) {
  throw Error(ErrorCode::kBundle, where + ": " + what);
}

std::string Ascii(std::string s) {  // messages may quote bytes of a file: keep them ASCII
  for (char& c : s)
    if (static_cast<unsigned char>(c) >= 0x80) c = '?';
  return s;
}

// Added-token patterns, matched leftmost-longest (the daachorse automaton of HF).
class TokenTrie {
 public:
  bool Add(std::string_view pattern, int32_t id) {  // false: the pattern is already there
    int32_t node = 0;
    for (unsigned char b : pattern) {
      auto& next = nodes_[static_cast<size_t>(node)].next;
      auto it = std::lower_bound(next.begin(), next.end(), b, [](const auto& e, unsigned char v) { return e.first < v; });
      if (it != next.end() && it->first == b) {
        node = it->second;
      } else {
        const auto created = static_cast<int32_t>(nodes_.size());
        next.insert(it, {b, created});
        nodes_.emplace_back();
        node = created;
      }
    }
    if (nodes_[static_cast<size_t>(node)].id >= 0) return false;
    nodes_[static_cast<size_t>(node)].id = id;
    first_[static_cast<unsigned char>(pattern[0])] = true;
    empty_ = false;
    return true;
  }
  bool empty() const { return empty_; }
  // The leftmost match at or after `from`, the longest of those starting there.
  bool Find(std::string_view text, size_t from, size_t* start, size_t* end, int32_t* id) const {
    for (size_t i = from; i < text.size(); ++i) {
      if (!first_[static_cast<unsigned char>(text[i])]) continue;
      int32_t node = 0, found = -1;
      size_t found_end = 0;
      for (size_t k = i; k < text.size(); ++k) {
        const auto& next = nodes_[static_cast<size_t>(node)].next;
        const auto b = static_cast<unsigned char>(text[k]);
        auto it = std::lower_bound(next.begin(), next.end(), b, [](const auto& e, unsigned char v) { return e.first < v; });
        if (it == next.end() || it->first != b) break;
        node = it->second;
        if (nodes_[static_cast<size_t>(node)].id >= 0) {
          found = nodes_[static_cast<size_t>(node)].id;
          found_end = k + 1;
        }
      }
      if (found >= 0) {
        *start = i;
        *end = found_end;
        *id = found;
        return true;
      }
    }
    return false;
  }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> next;
    int32_t id = -1;
  };
  std::vector<Node> nodes_{1};
  std::array<bool, 256> first_{};
  bool empty_ = true;
};

struct AddedToken {
  std::string content;
  bool single_word = false, lstrip = false, rstrip = false, normalized = true, special = false;
  bool operator==(const AddedToken&) const = default;
};

bool Flag(const json& j, const char* key, bool fallback, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) Fail(where, std::string("\"") + key + "\" must be true or false");
  return it->get<bool>();
}

std::string String(const json& j, const char* key, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_string()) Fail(where, std::string("\"") + key + "\" must be a string");
  return it->get<std::string>();
}

std::unique_ptr<BpeModel> MakeModel(const json& m, const std::string& where) {
  if (!m.is_object()) Fail(where, "must be an object");
  const std::string type = m.contains("type") && m.at("type").is_string() ? m.at("type").get<std::string>() : "BPE";
  if (type != "BPE")
    Fail(where, "the model \"" + type + "\" is not supported by tandem's tokenizer (supported: BPE); "
                "use a model with a BPE tokenizer");
  if (m.contains("dropout") && !m.at("dropout").is_null() &&
      !(m.at("dropout").is_number() && m.at("dropout").get<double>() == 0.0))
    Fail(where, "BPE dropout is not supported (it makes encoding random); set \"dropout\" to null");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (m.contains(key) && !m.at(key).is_null() && !(m.at(key).is_string() && m.at(key).get<std::string>().empty()))
      Fail(where, std::string("BPE \"") + key + "\" is not supported by tandem's tokenizer; use a tokenizer "
                                                    "without it");
  }
  detail::BpeOptions options;
  options.byte_fallback = Flag(m, "byte_fallback", false, where);
  options.fuse_unk = Flag(m, "fuse_unk", false, where);
  options.ignore_merges = Flag(m, "ignore_merges", false, where);
  if (m.contains("unk_token") && !m.at("unk_token").is_null()) options.unk_token = String(m, "unk_token", where);

  const json& vocab = m.contains("vocab") ? m.at("vocab") : json();
  if (!vocab.is_object()) Fail(where, "\"vocab\" must be an object of token: id");
  detail::StringIdMap map;
  map.reserve(vocab.size());
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it->is_number_integer()) Fail(where, "vocab id of \"" + Ascii(it.key()) + "\" is not an integer");
    const int64_t id = it->get<int64_t>();
    if (id < 0 || id >= kMaxId) Fail(where, "vocab id " + std::to_string(id) + " is out of range [0, 2^24)");
    map[it.key()] = static_cast<int32_t>(id);
  }
  const json& merges = m.contains("merges") ? m.at("merges") : json();
  if (!merges.is_array()) Fail(where, "\"merges\" must be a list");
  std::vector<std::pair<std::string, std::string>> pairs;
  pairs.reserve(merges.size());
  for (const json& e : merges) {
    if (e.is_string()) {  // "a b"
      const std::string& line = e.get_ref<const std::string&>();
      if (line.rfind("#version", 0) == 0) continue;
      const size_t sp = line.find(' ');
      if (sp == std::string::npos || line.find(' ', sp + 1) != std::string::npos)
        Fail(where, "merge " + std::to_string(pairs.size() + 1) + " is not \"a b\"");
      pairs.emplace_back(line.substr(0, sp), line.substr(sp + 1));
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      pairs.emplace_back(e[0].get<std::string>(), e[1].get<std::string>());
    } else {
      Fail(where, "a merge must be \"a b\" or [\"a\", \"b\"]");
    }
  }
  return std::make_unique<BpeModel>(std::move(map), pairs, std::move(options), where);
}

}  // namespace

struct Tokenizer::Impl {
  std::string source;
  std::unique_ptr<BpeModel> model;
  std::unique_ptr<detail::Normalizer> normalizer;
  std::unique_ptr<detail::PreTokenizer> pre_tokenizer;
  std::unique_ptr<detail::PostProcessor> post_processor;
  std::unique_ptr<detail::Decoder> decoder;
  bool byte_level_deferred = false;

  // added vocabulary
  std::unordered_map<std::string, int32_t> added_ids;  // content -> id
  std::map<int32_t, AddedToken> added;                 // id -> token
  std::unordered_map<int32_t, std::string> normalized_text;  // id -> content as normalized
  std::unordered_set<std::string> special;              // contents of special tokens
  TokenTrie raw_trie, normalized_trie;
  std::shared_ptr<const detail::Regex> word_char;       // Rust regex's \w

  void AddTokens(const json& list, const std::string& where);
  bool IsWordChar(std::string_view text, size_t at) const;
  template <typename Emit>
  void SplitAdded(const TokenTrie& trie, std::string_view text, Emit&& emit) const;
  void EncodeSegment(std::string_view segment, bool at_origin, std::vector<int32_t>& ids) const;
  void EncodePiece(std::string_view text, bool at_origin, std::vector<int32_t>& ids) const;
  const std::string* TokenText(int64_t id) const;
};

void Tokenizer::Impl::AddTokens(const json& list, const std::string& where) {
  if (list.is_null()) return;
  if (!list.is_array()) Fail(where, "\"added_tokens\" must be a list");
  int64_t next_id = static_cast<int64_t>(model->size());
  for (size_t i = 0; i < list.size(); ++i) {
    const json& t = list[i];
    const std::string at = where + " added_tokens[" + std::to_string(i) + "]";
    if (!t.is_object()) Fail(at, "must be an object");
    AddedToken token;
    token.content = String(t, "content", at);
    token.single_word = Flag(t, "single_word", false, at);
    token.lstrip = Flag(t, "lstrip", false, at);
    token.rstrip = Flag(t, "rstrip", false, at);
    token.normalized = Flag(t, "normalized", true, at);
    token.special = Flag(t, "special", false, at);
    if (token.content.empty()) continue;
    // ids as HF assigns them: the existing id of that text, else the next free one (the
    // file's "id" only served HF to warn about a difference)
    auto known = added_ids.find(token.content);
    if (known != added_ids.end() && added.at(known->second) == token) continue;
    int64_t id;
    if (known != added_ids.end()) id = known->second;
    else if (auto in_model = model->TokenToId(token.content)) id = *in_model;
    else id = next_id++;
    if (id >= kMaxId) Fail(at, "too many added tokens");
    if (token.normalized && normalizer) {
      std::string normed = token.content;
      bool lead_deleted = false;
      normalizer->Apply(normed, lead_deleted);
      if (normed != token.content) normalized_text[static_cast<int32_t>(id)] = normed;
    }
    added_ids[token.content] = static_cast<int32_t>(id);
    if (token.special) special.insert(token.content);
    added[static_cast<int32_t>(id)] = std::move(token);
  }
  for (const auto& [id, token] : added) {
    const bool normalized = token.normalized;
    auto cached = normalized_text.find(id);
    const std::string& pattern = normalized && cached != normalized_text.end() ? cached->second : token.content;
    if (pattern.empty())
      Fail(where, "added token \"" + Ascii(token.content) + "\" normalizes to nothing; the file cannot be used");
    if (!(normalized ? normalized_trie : raw_trie).Add(pattern, id))
      Fail(where, "two added tokens match the same text \"" + Ascii(pattern) + "\"; the file cannot be used");
  }
}

bool Tokenizer::Impl::IsWordChar(std::string_view text, size_t at) const {
  const size_t len = detail::text::CharLen(static_cast<unsigned char>(text[at]));
  size_t s = 0, e = 0;
  return word_char->Search(text.substr(at, len), 0, &s, &e);
}

// AddedVocabulary::find_matches: the added tokens of `trie` in `text` with their single_word,
// lstrip and rstrip rules; emit(is_token, start, end, id) over the text in order.
template <typename Emit>
void Tokenizer::Impl::SplitAdded(const TokenTrie& trie, std::string_view text, Emit&& emit) const {
  if (trie.empty()) {
    emit(false, 0, text.size(), -1);
    return;
  }
  size_t start_offset = 0, pos = 0, ms = 0, me = 0;
  int32_t id = -1;
  while (trie.Find(text, pos, &ms, &me, &id)) {
    pos = me;
    size_t start = ms, stop = me;
    const AddedToken& token = added.at(id);
    if (token.single_word) {
      size_t last = start;  // the character before the match
      if (start > 0)
        do --last;
        while (last > 0 && (static_cast<unsigned char>(text[last]) & 0xC0) == 0x80);
      const bool start_space = start == 0 || !IsWordChar(text, last);
      const bool stop_space = stop == text.size() || !IsWordChar(text, stop);
      if (!start_space || !stop_space) continue;
    }
    if (token.lstrip) {
      size_t s = start;  // where the whitespace before the match begins
      while (s > 0) {
        size_t b = s - 1;
        while (b > 0 && (static_cast<unsigned char>(text[b]) & 0xC0) == 0x80) --b;
        size_t k = b;
        if (!detail::text::IsWhitespace(detail::text::NextChar(text, k))) break;
        s = b;
      }
      start = std::max(s, start_offset);
    }
    if (token.rstrip) {
      while (stop < text.size()) {
        size_t k = stop;
        if (!detail::text::IsWhitespace(detail::text::NextChar(text, k))) break;
        stop = k;
      }
    }
    if (start_offset < start) emit(false, start_offset, start, -1);
    emit(true, start, stop, id);
    start_offset = stop;
  }
  if (start_offset != text.size()) emit(false, start_offset, text.size(), -1);
}

void Tokenizer::Impl::EncodeSegment(std::string_view segment, bool at_origin, std::vector<int32_t>& ids) const {
  std::string normalized;
  std::string_view text = segment;
  if (normalizer) {
    normalized.assign(segment);
    bool lead_deleted = false;
    normalizer->Apply(normalized, lead_deleted);
    at_origin = at_origin && !lead_deleted;
    text = normalized;
  }
  if (text.empty()) return;
  SplitAdded(normalized_trie, text, [&](bool is_token, size_t s, size_t e, int32_t id) {
    if (is_token) ids.push_back(id);
    else if (e > s) EncodePiece(text.substr(s, e - s), at_origin && s == 0, ids);
  });
}

void Tokenizer::Impl::EncodePiece(std::string_view text, bool at_origin, std::vector<int32_t>& ids) const {
  if (!pre_tokenizer) {
    model->Tokenize(text, false, ids);
    return;
  }
  std::vector<detail::Piece> pieces;
  pieces.push_back({std::string(text), at_origin});
  pre_tokenizer->Apply(pieces);
  for (const detail::Piece& p : pieces) model->Tokenize(p.text, byte_level_deferred, ids);
}

const std::string* Tokenizer::Impl::TokenText(int64_t id) const {
  if (id < 0 || id > std::numeric_limits<int32_t>::max()) return nullptr;
  const auto id32 = static_cast<int32_t>(id);
  auto it = added.find(id32);
  if (it != added.end()) {
    auto n = normalized_text.find(id32);
    return n != normalized_text.end() ? &n->second : &it->second.content;
  }
  return model->IdToToken(id32);
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

std::shared_ptr<const Tokenizer> Tokenizer::Load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(ErrorCode::kBundle, "cannot read the tokenizer file \"" + path + "\"");
  const std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw Error(ErrorCode::kBundle, "cannot read the tokenizer file \"" + path + "\"");
  return FromJson(data, path);
}

std::shared_ptr<const Tokenizer> Tokenizer::FromJson(std::string_view text, const std::string& source) {
  json doc;
  try {
    doc = json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    throw Error(ErrorCode::kBundle, source + " is not a valid tokenizer file: it is not valid JSON (" +
                                        Ascii(e.what()) + "); use a Hugging Face tokenizer.json");
  }
  if (!doc.is_object()) Fail(source, "not a Hugging Face tokenizer.json (expected a JSON object)");
  if (doc.contains("version") && !(doc.at("version").is_string() && doc.at("version").get<std::string>() == "1.0"))
    Fail(source, "unknown tokenizer.json version (this reader knows \"1.0\")");
  auto impl = std::make_unique<Impl>();
  impl->source = source;
  try {
    if (!doc.contains("model")) Fail(source, "no \"model\"");
    impl->model = MakeModel(doc.at("model"), source + " model");
    auto part = [&](const char* key) -> const json* {
      auto it = doc.find(key);
      return it == doc.end() || it->is_null() ? nullptr : &*it;
    };
    if (const json* j = part("normalizer")) impl->normalizer = detail::MakeNormalizer(*j, source + " normalizer");
    if (const json* j = part("pre_tokenizer")) {
      impl->pre_tokenizer = detail::MakePreTokenizer(*j, source + " pre_tokenizer");
      impl->byte_level_deferred = impl->pre_tokenizer->DeferByteLevel();
    }
    if (const json* j = part("post_processor"))
      impl->post_processor = detail::MakePostProcessor(*j, source + " post_processor");
    if (const json* j = part("decoder")) impl->decoder = detail::MakeDecoder(*j, source + " decoder");
    impl->word_char = detail::Regex::Compile(R"([\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\x{200C}\x{200D}])", source);
    if (const json* j = part("added_tokens")) impl->AddTokens(*j, source);
  } catch (const json::exception& e) {  // a value of an unexpected type somewhere
    throw Error(ErrorCode::kBundle, source + ": " + Ascii(e.what()) + "; the file is not a valid tokenizer.json");
  }
  return std::shared_ptr<const Tokenizer>(new Tokenizer(std::move(impl)));
}

std::vector<int64_t> Tokenizer::Encode(std::string_view text, bool add_special_tokens) const {
  const size_t bad = detail::text::FirstInvalidUtf8(text);
  if (bad != detail::text::kValid)
    throw Error(ErrorCode::kInvalidArgument,
                "the text is not valid UTF-8 (byte " + std::to_string(bad) + " of " + std::to_string(text.size()) +
                    " starts an invalid sequence); pass UTF-8 text");
  const Impl& m = *impl_;
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  m.SplitAdded(m.raw_trie, text, [&](bool is_token, size_t s, size_t e, int32_t id) {
    if (is_token) ids.push_back(id);
    else if (e > s) m.EncodeSegment(text.substr(s, e - s), s == 0, ids);
  });
  if (m.post_processor) m.post_processor->Apply(ids, add_special_tokens);
  return std::vector<int64_t>(ids.begin(), ids.end());
}

std::string Tokenizer::Decode(std::span<const int64_t> ids, bool skip_special_tokens) const {
  const Impl& m = *impl_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int64_t id : ids) {
    if (id < 0 || id > std::numeric_limits<uint32_t>::max())
      throw Error(ErrorCode::kInvalidArgument, "token id " + std::to_string(id) + " is out of range (ids are >= 0)");
    const std::string* text = m.TokenText(id);
    if (!text || (skip_special_tokens && m.special.count(*text))) continue;
    tokens.push_back(*text);
  }
  if (!m.decoder) {
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i) out += ' ';
      out += tokens[i];
    }
    return out;
  }
  m.decoder->Apply(tokens);
  std::string out;
  for (const std::string& t : tokens) out += t;
  return out;
}

int64_t Tokenizer::vocab_size() const {
  const Impl& m = *impl_;
  int64_t overlap = 0;
  for (const auto& [content, id] : m.added_ids)
    if (m.model->TokenToId(content)) ++overlap;
  return static_cast<int64_t>(m.model->size()) + static_cast<int64_t>(m.added_ids.size()) - overlap;
}

std::optional<int64_t> Tokenizer::TokenToId(std::string_view token) const {
  auto it = impl_->added_ids.find(std::string(token));
  if (it != impl_->added_ids.end()) return it->second;
  if (auto id = impl_->model->TokenToId(token)) return *id;
  return std::nullopt;
}

std::optional<std::string> Tokenizer::IdToToken(int64_t id) const {
  if (const std::string* t = impl_->TokenText(id)) return *t;
  return std::nullopt;
}

bool Tokenizer::IsSpecial(int64_t id) const {
  const std::string* t = impl_->TokenText(id);
  return t && impl_->special.count(*t);
}

const std::string& Tokenizer::source() const { return impl_->source; }

}  // namespace tandem
