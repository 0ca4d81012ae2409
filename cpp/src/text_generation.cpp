// Text in, text out: a layer over Model and Generator. The prompt is encoded with the
// bundle's tokenizer, each decoding round's ids go through a Detokenizer (UTF-8-safe text,
// stop strings) and the text it releases to the caller's callback. The Python API runs the
// same loop over the same Detokenizer (runtime/api.py, Stream), so both give the same text.
#include "tandem/text.hpp"

namespace tandem {

std::shared_ptr<const Tokenizer> LoadTokenizer(const Model& model) {
  if (model.tokenizer_path().empty())
    throw Error(ErrorCode::kBundle, model.bundle_path() +
                                        " ships no tokenizer.json: generate from token ids, or re-export the bundle "
                                        "with its tokenizer");
  auto tokenizer = Tokenizer::Load(model.tokenizer_path());
  if (tokenizer->vocab_size() > model.vocab_size())
    throw Error(ErrorCode::kBundle, model.tokenizer_path() + " has " + std::to_string(tokenizer->vocab_size()) +
                                        " tokens but the graphs' vocabulary has " + std::to_string(model.vocab_size()) +
                                        ": the tokenizer belongs to another model; re-export the bundle");
  return tokenizer;
}

TextResult GenerateText(std::shared_ptr<const Model> model, std::shared_ptr<const Tokenizer> tokenizer,
                        std::string_view prompt, const GenerateOptions& options, const TextOptions& text,
                        const TextCallback& on_text) {
  if (!tokenizer)
    throw Error(ErrorCode::kInvalidArgument, "generating from text needs a tokenizer (LoadTokenizer(model))");
  const std::vector<int64_t> ids = tokenizer->Encode(prompt, text.add_special_tokens);
  return GenerateText(std::move(model), std::move(tokenizer), ids, options, text, on_text);
}

TextResult GenerateText(std::shared_ptr<const Model> model, std::shared_ptr<const Tokenizer> tokenizer,
                        std::span<const int64_t> prompt_ids, const GenerateOptions& options, const TextOptions& text,
                        const TextCallback& on_text) {
  Detokenizer detok(std::move(tokenizer), text.stop, text.skip_special_tokens);
  TextResult result;
  result.prompt_ids.assign(prompt_ids.begin(), prompt_ids.end());
  Generator gen(std::move(model), result.prompt_ids, options);
  for (;;) {
    const std::vector<int64_t> step = gen.Step();
    if (step.empty()) break;
    const std::string piece = detok.Push(step);
    if (!piece.empty() && on_text && !on_text(piece)) {
      result.finish_reason = "cancelled";
      break;
    }
    if (detok.stopped()) {
      result.finish_reason = "stop";
      break;
    }
  }
  if (result.finish_reason.empty()) {
    const std::string tail = detok.Finish();
    if (!tail.empty() && on_text) on_text(tail);
    result.finish_reason = detok.stopped() ? "stop" : ToString(gen.finish_reason());
  }
  result.text = detok.text();
  result.ids = detok.ids();
  result.stats = gen.stats();
  return result;
}

}  // namespace tandem
