// tandem text API: text in, text out for apps that embed the C++ library. The bundle's
// tokenizer (Hugging Face tokenizer.json, read by the C++ core), incremental UTF-8-safe
// detokenization with stop strings, and generation from a text prompt that streams text
// pieces through a callback, as a layer over Model and Generator (tandem.hpp).
//
//   auto model = tandem::Model::Load({.bundle_path = "bundles/mine"});
//   auto tok = tandem::LoadTokenizer(*model);
//   tandem::GenerateOptions opt;
//   opt.mode = tandem::Mode::kSpeed;
//   tandem::TextResult r = tandem::GenerateText(model, tok, "def fib(n):", opt, {.stop = {"\n\n"}},
//       [](std::string_view piece) { std::cout << piece << std::flush; return true; });
//
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
#include <functional>
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

// The tokenizer of a loaded bundle (its tokenizer.json). Throws Error(kBundle) if the bundle
// ships none, if the file is unsupported, or if it has more tokens than the model's vocabulary.
std::shared_ptr<const Tokenizer> LoadTokenizer(const Model& model);

// Text of generated ids as they come: never half a UTF-8 character (text is held back until
// the bytes of a character are complete) and, with stop strings, never text that could be
// the start of a stop string. The pieces Push and Finish return add up to text(), which ends
// right before the first stop string found (stopped() is then true and further ids are
// ignored). Decodes as Tokenizer::Decode does. One thread at a time.
class Detokenizer {
 public:
  // tokenizer may be null (a bundle without tokenizer.json): the text is then always empty
  // and `stop` must be empty. Stop strings must be non-empty UTF-8 (else kInvalidArgument).
  explicit Detokenizer(std::shared_ptr<const Tokenizer> tokenizer, std::vector<std::string> stop = {},
                       bool skip_special_tokens = true);
  ~Detokenizer();
  Detokenizer(Detokenizer&&) noexcept;
  Detokenizer& operator=(Detokenizer&&) noexcept;

  // Adds generated ids; returns the text they release (often "", e.g. mid-character).
  std::string Push(std::span<const int64_t> ids);
  // At the end of generation: the rest (undecodable bytes as U+FFFD, text held back for a
  // stop string that can no longer complete).
  std::string Finish();

  bool stopped() const noexcept;                  // a stop string was found
  const std::string& text() const noexcept;       // all text released so far
  const std::vector<int64_t>& ids() const noexcept;  // all ids pushed

 private:
  struct State;
  std::unique_ptr<State> state_;
};

struct TextOptions {
  std::vector<std::string> stop;   // generation ends before the first of these (finish "stop")
  bool add_special_tokens = true;  // encode the prompt with the tokenizer's special tokens (BOS...)
  bool skip_special_tokens = true; // special tokens (EOS...) do not show in the text
};

struct TextResult {
  std::string text;                 // the generated text (the prompt not included)
  std::vector<int64_t> prompt_ids;  // the prompt's ids
  std::vector<int64_t> ids;         // the generated ids (EOS included when hit)
  std::string finish_reason;        // "eos" | "max_new_tokens" | "length" | "stop" | "cancelled"
  Stats stats;
};

// Called with each new piece of text, in order; return false to end generation there
// (finish_reason "cancelled"). Pieces are valid UTF-8 and never empty.
using TextCallback = std::function<bool(std::string_view piece)>;

// Generates a completion of the UTF-8 `prompt` (encoded with `tokenizer`; invalid UTF-8
// throws Error(kInvalidArgument)), streaming text through `on_text` (may be empty). The same
// ids, text and finish reason as the Python API's generate / stream for the same prompt and
// options. Errors: tandem::Error, as Generator.
TextResult GenerateText(std::shared_ptr<const Model> model, std::shared_ptr<const Tokenizer> tokenizer,
                        std::string_view prompt, const GenerateOptions& options, const TextOptions& text = {},
                        const TextCallback& on_text = {});
// The same from prompt ids (`tokenizer` may then be null: the text is empty).
TextResult GenerateText(std::shared_ptr<const Model> model, std::shared_ptr<const Tokenizer> tokenizer,
                        std::span<const int64_t> prompt_ids, const GenerateOptions& options,
                        const TextOptions& text = {}, const TextCallback& on_text = {});

}  // namespace tandem
