// The pipeline stages of tokenizer.json other than the model: normalizers, pre-tokenizers,
// decoders and post-processors, each as Hugging Face tokenizers runs it (only the token
// ids and text matter here, not offsets). Built from the JSON by the Make* functions, which
// refuse an unsupported type with Error(kBundle) naming it.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

namespace tandem::detail {

// A piece of text on its way to the model.
struct Piece {
  std::string text;
  bool at_origin = false;  // starts at offset 0 of the original text (Metaspace "first")
};

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  // Rewrites `s` (valid UTF-8). Sets lead_deleted when the text's first original character
  // is gone (its first character then maps to a later original offset).
  virtual void Apply(std::string& s, bool& lead_deleted) const = 0;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Splits and rewrites the pieces; empty pieces are dropped.
  virtual void Apply(std::vector<Piece>& pieces) const = 0;
  // Lets the last stage, when it is ByteLevel, leave its byte mapping to the model (which
  // then reads the raw bytes of each piece). Returns whether it did.
  virtual bool DeferByteLevel() { return false; }
};

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void Apply(std::vector<std::string>& tokens) const = 0;  // HF decode_chain
};

// Token lookups the post-processors need at build time.
class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  virtual void Apply(std::vector<int32_t>& ids, bool add_special_tokens) const = 0;
};

std::unique_ptr<Normalizer> MakeNormalizer(const nlohmann::json& j, const std::string& where, int depth = 0);
std::unique_ptr<PreTokenizer> MakePreTokenizer(const nlohmann::json& j, const std::string& where, int depth = 0);
std::unique_ptr<Decoder> MakeDecoder(const nlohmann::json& j, const std::string& where, int depth = 0);
std::unique_ptr<PostProcessor> MakePostProcessor(const nlohmann::json& j, const std::string& where, int depth = 0);

}  // namespace tandem::detail
