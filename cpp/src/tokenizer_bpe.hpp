// The BPE model of tokenizer.json, as Hugging Face tokenizers' models::bpe runs it: the
// characters of a word (or its bytes, for byte-level tokenizers), unknown characters to
// byte-fallback tokens or the unk token, then merges by rank (lowest first, leftmost on
// ties), with a cache of words already seen.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace tandem::detail {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
using StringIdMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

// The byte-level alphabet (GPT-2's bytes_to_unicode): byte -> code point.
uint32_t ByteLevelChar(unsigned char b) noexcept;
// The inverse; -1 for a code point outside the alphabet.
int ByteLevelByte(uint32_t cp) noexcept;
// The UTF-8 text of `bytes` mapped through the byte-level alphabet.
void AppendByteLevel(std::string& out, std::string_view bytes);

struct BpeOptions {
  bool byte_fallback = false;
  bool fuse_unk = false;
  bool ignore_merges = false;
  std::optional<std::string> unk_token;
  size_t cache_capacity = 65536;  // words cached (shorter than 256 bytes), as HF's cache
};

class BpeModel {
 public:
  // Throws Error(kBundle) naming `where` for merges whose tokens are not in the vocabulary.
  BpeModel(StringIdMap vocab, const std::vector<std::pair<std::string, std::string>>& merges, BpeOptions options,
           const std::string& where);
  ~BpeModel();

  // Appends the ids of `word`. byte_level: `word` holds raw bytes whose byte-level mapping
  // (ByteLevel pre-tokenizer) is implied, so that the mapped text need not be built.
  void Tokenize(std::string_view word, bool byte_level, std::vector<int32_t>& out) const;

  std::optional<int32_t> TokenToId(std::string_view token) const;
  const std::string* IdToToken(int32_t id) const;  // nullptr if none
  size_t size() const { return vocab_.size(); }    // entries of the vocabulary (HF get_vocab_size)

 private:
  struct MergeTable;
  struct Cache;
  void MergeWord(std::string_view word, bool byte_level, std::vector<int32_t>& out) const;

  StringIdMap vocab_;
  std::vector<const std::string*> vocab_r_;  // id -> token (into vocab_'s keys)
  std::unique_ptr<MergeTable> merges_;
  BpeOptions options_;
  std::optional<int32_t> unk_id_;
  std::array<int32_t, 256> byte_level_ids_{};  // id of the byte-level character of each byte, -1 if none
  std::array<int32_t, 128> ascii_ids_{};       // id of each ASCII character, -1 if none
  std::array<int32_t, 256> fallback_ids_{};    // id of "<0xHH>", -1 if none
  std::unique_ptr<Cache> cache_;
};

}  // namespace tandem::detail
