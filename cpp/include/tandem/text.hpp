// tandem text API: the tokenizer of a bundle (Hugging Face tokenizer.json, read by the C++
// core), for apps that work with text instead of token ids.
//
//   auto tok = tandem::Tokenizer::Load("bundles/default/tokenizer.json");
//   std::vector<int64_t> ids = tok->Encode("def fib(n):");
//   std::string text = tok->Decode(ids);
//
// Encode and Decode give what Hugging Face tokenizers' `encode(text).ids` and
// `decode(ids, skip_special_tokens=True)` give for the same file, token for token (the
// file's truncation and padding, batch settings, are not applied). Supported: the BPE model
// (byte-level as in GPT-2, Llama 3 and Qwen2; SentencePiece-style with byte fallback as in
// Llama 2 and Mistral) with its added and special tokens, the normalizers, pre-tokenizers,
// post-processors and decoders these families use. A file with anything else is refused at
// load with an Error(kBundle) that names the component.
//
// Threading: a Tokenizer is immutable after Load and may be shared by any number of threads.
// Errors: tandem::Error, like the rest of the API (tandem.hpp).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tandem/tandem.hpp"

namespace tandem {

class Tokenizer {
 public:
  // Reads a tokenizer.json. Throws Error(kBundle) if the file is missing, malformed or uses
  // a component this tokenizer does not support (the message names it).
  static std::shared_ptr<const Tokenizer> Load(const std::string& path);
  // The same from the file's text; `source` names it in error messages.
  static std::shared_ptr<const Tokenizer> FromJson(std::string_view json, const std::string& source = "tokenizer.json");
  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // The token ids of UTF-8 `text`; add_special_tokens: the post-processor's (e.g. a BOS
  // token). Invalid UTF-8 throws Error(kInvalidArgument) with the offset of the bad byte.
  std::vector<int64_t> Encode(std::string_view text, bool add_special_tokens = true) const;
  // The text of `ids`; skip_special_tokens drops special tokens (EOS, BOS...). Ids that are
  // not in the vocabulary are skipped (as Hugging Face does); negative ids throw
  // Error(kInvalidArgument). Bytes that do not form UTF-8 become U+FFFD.
  std::string Decode(std::span<const int64_t> ids, bool skip_special_tokens = true) const;

  // Number of tokens, added tokens included (Hugging Face get_vocab_size(True)).
  int64_t vocab_size() const;
  std::optional<int64_t> TokenToId(std::string_view token) const;
  std::optional<std::string> IdToToken(int64_t id) const;
  bool IsSpecial(int64_t id) const;  // an added token marked special
  const std::string& source() const;

  struct Impl;

 private:
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tandem
