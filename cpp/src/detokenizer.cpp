// tandem::Detokenizer: incremental, UTF-8-safe text of generated ids, and stop strings.
//
// Decoding: the ids are decoded in a sliding window, ids[prefix, end), against the text the
// window's already-shown part ids[prefix, read) decodes to; the difference is released once
// it does not end in U+FFFD (an incomplete UTF-8 sequence, e.g. the first bytes of a
// character split over byte-level tokens). Decoding a window rather than one token keeps what
// decoders do across tokens (Metaspace and Strip dropping a leading space, byte fallback), so
// that the pieces add up to Tokenizer::Decode of all the ids.
//
// Stop strings: released text never holds a whole stop string nor ends with the beginning of
// one; such a tail is kept back until the next ids tell (or Finish releases it).
#include <algorithm>

#include "tandem/text.hpp"
#include "tokenizer_unicode.hpp"

namespace tandem {

struct Detokenizer::State {
  std::shared_ptr<const Tokenizer> tokenizer;
  std::vector<std::string> stop;
  bool skip_special = true;
  std::vector<int64_t> ids;
  size_t prefix = 0, read = 0;  // ids[prefix, read) is context already shown
  std::string text, held;       // released text; text held back for a stop string
  bool stopped = false;

  bool IsByteToken(int64_t id) const {  // "<0xHH>", a byte-fallback token
    const auto token = tokenizer->IdToToken(id);
    return token && token->size() == 6 && token->compare(0, 3, "<0x") == 0 && (*token)[5] == '>';
  }

  bool Visible(int64_t id) const {  // Decode shows something for id
    if (id < 0 || !tokenizer->IdToToken(id)) return false;
    return !(skip_special && tokenizer->IsSpecial(id));
  }

  std::string Window(size_t from, size_t to) const {
    return tokenizer->Decode(std::span<const int64_t>(ids).subspan(from, to - from), skip_special);
  }

  // The newly decodable text of ids (UTF-8-safe unless `final`).
  std::string Decode(bool final) {
    if (!tokenizer || read == ids.size()) return "";
    const std::string shown = Window(prefix, read);
    const std::string full = Window(prefix, ids.size());
    static const std::string kReplacement = "\xEF\xBF\xBD";
    const bool incomplete = full.size() >= kReplacement.size() &&
                            full.compare(full.size() - kReplacement.size(), kReplacement.size(), kReplacement) == 0;
    // wait for the next ids: a character is incomplete, or the text ends in a run of
    // byte-fallback tokens (ByteFallback turns a whole run into U+FFFD when a later byte makes
    // it invalid UTF-8, so the run's text is known only once a token ends it)
    if (!final && (incomplete || full.size() < shown.size() || IsByteToken(ids.back()))) return "";
    // The next window starts at `read` only if its first part shows a token: decoders treat
    // a text's first token apart (Metaspace drops its "▁", Strip its leading space), and a
    // skipped special token must not make a later token the first one.
    bool visible = final;
    for (size_t i = read; i < ids.size() && !visible; ++i) visible = Visible(ids[i]);
    if (visible) prefix = final ? ids.size() : read;
    read = ids.size();
    if (full.size() <= shown.size()) return "";
    // the decoders of supported tokenizers extend the window's text at its end; were one to
    // rewrite it, cut at a character boundary so that the piece stays valid UTF-8
    size_t from = shown.size();
    if (full.compare(0, from, shown) != 0)
      while (from > 0 && (static_cast<unsigned char>(full[from]) & 0xC0) == 0x80) --from;
    return full.substr(from);
  }

  // Applies the stop strings to newly decoded text; returns what is released.
  std::string Release(const std::string& piece, bool final) {
    if (stop.empty()) {
      text += piece;
      return piece;
    }
    std::string buffer = held + piece;
    size_t cut = std::string::npos;
    for (const std::string& s : stop) cut = std::min(cut, buffer.find(s));
    if (cut != std::string::npos) {
      stopped = true;
      held.clear();
      buffer.resize(cut);
      text += buffer;
      return buffer;
    }
    size_t keep = 0;  // the longest end of the buffer that begins a stop string
    if (!final) {
      for (const std::string& s : stop)
        for (size_t k = std::min(s.size() - 1, buffer.size()); k > keep; --k)
          if (buffer.compare(buffer.size() - k, k, s, 0, k) == 0) {
            keep = k;
            break;
          }
    }
    held = buffer.substr(buffer.size() - keep);
    buffer.resize(buffer.size() - keep);
    text += buffer;
    return buffer;
  }
};

Detokenizer::Detokenizer(std::shared_ptr<const Tokenizer> tokenizer, std::vector<std::string> stop,
                         bool skip_special_tokens)
    : state_(std::make_unique<State>()) {
  for (const std::string& s : stop) {
    if (s.empty()) throw Error(ErrorCode::kInvalidArgument, "stop strings must be non-empty");
    if (detail::text::FirstInvalidUtf8(s) != detail::text::kValid)
      throw Error(ErrorCode::kInvalidArgument, "a stop string is not valid UTF-8");
  }
  if (!tokenizer && !stop.empty())
    throw Error(ErrorCode::kInvalidArgument,
                "stop strings need the bundle's tokenizer (this bundle ships no tokenizer.json); pass eos ids instead");
  state_->tokenizer = std::move(tokenizer);
  state_->stop = std::move(stop);
  state_->skip_special = skip_special_tokens;
}

Detokenizer::~Detokenizer() = default;
Detokenizer::Detokenizer(Detokenizer&&) noexcept = default;
Detokenizer& Detokenizer::operator=(Detokenizer&&) noexcept = default;

std::string Detokenizer::Push(std::span<const int64_t> ids) {
  State& s = *state_;
  if (s.stopped) return "";
  s.ids.insert(s.ids.end(), ids.begin(), ids.end());
  return s.Release(s.Decode(false), false);
}

std::string Detokenizer::Finish() {
  State& s = *state_;
  if (s.stopped) return "";
  return s.Release(s.Decode(true), true);
}

bool Detokenizer::stopped() const noexcept { return state_->stopped; }
const std::string& Detokenizer::text() const noexcept { return state_->text; }
const std::vector<int64_t>& Detokenizer::ids() const noexcept { return state_->ids; }

}  // namespace tandem
