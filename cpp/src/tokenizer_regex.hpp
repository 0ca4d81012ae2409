// Regular expressions of tokenizer.json (pre-tokenizer Split, normalizer and decoder Replace),
// run by PCRE2 with its JIT. Hugging Face tokenizers runs them with Oniguruma; Compile
// translates the Oniguruma syntax those files use to PCRE2 with the same meaning (\s, \w,
// \h and \v as Oniguruma defines them in UTF-8 mode) and refuses, naming the construct, what
// the two engines read differently (anchors ^ $, \b, POSIX brackets, nested classes...).
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace tandem::detail {

class Regex {
 public:
  // `pattern` in Oniguruma syntax; throws Error(kBundle) naming `where` when unsupported.
  static std::shared_ptr<const Regex> Compile(const std::string& pattern, const std::string& where);
  // Matches `text` literally (a "String" pattern of tokenizer.json).
  static std::shared_ptr<const Regex> Literal(const std::string& text, const std::string& where);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // The first match starting at or after `from` in valid UTF-8 `text`: [*start, *end).
  // Throws Error(kInvalidArgument) if PCRE2 gives up (match limits).
  bool Search(std::string_view text, size_t from, size_t* start, size_t* end) const;

  // Every match of `text`, as Oniguruma's find_iter (the onig crate) yields them: an empty
  // match right where the previous match ended is skipped by one character.
  template <typename F>
  void ForEachMatch(std::string_view text, F&& fn) const {
    size_t last_end = 0, last_match_end = static_cast<size_t>(-1), s = 0, e = 0;
    while (last_end <= text.size() && Search(text, last_end, &s, &e)) {
      if (s == e && last_match_end == e) {
        last_end += last_end < text.size() ? CharLenAt(text, last_end) : 1;
        continue;
      }
      last_end = last_match_end = e;
      fn(s, e);
    }
  }

  const std::string& pattern() const { return source_; }

 private:
  struct Code;
  Regex(std::unique_ptr<Code> code, std::string source);
  static size_t CharLenAt(std::string_view text, size_t i);
  std::unique_ptr<Code> code_;
  std::string source_;
};

// An Oniguruma pattern rewritten for PCRE2 (UTF + UCP); throws Error(kBundle) for
// constructs the engines disagree on. Exposed for the unit tests.
std::string OnigToPcre2(const std::string& pattern, const std::string& where);

// A span of HF's Pattern::find_matches: [start, end) and whether it is a match.
struct Span {
  size_t start, end;
  bool match;
};
// HF's find_matches: spans covering `text`, matches and the gaps between them; an empty
// text gives one empty non-match.
void FindMatches(const Regex& re, std::string_view text, std::vector<Span>& out);

}  // namespace tandem::detail
