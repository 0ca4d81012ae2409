#include "tokenizer_regex.hpp"

#include <pcre2.h>

#include <cctype>

#include "tandem/tandem.hpp"
#include "tokenizer_unicode.hpp"

namespace tandem::detail {
namespace {

[[noreturn]] void Unsupported(const std::string& where, const std::string& pattern, const std::string& what) {
  throw Error(ErrorCode::kBundle, where + ": the regular expression \"" + pattern + "\" uses " + what +
                                      ", which tandem's tokenizer does not support (Oniguruma and PCRE2 read it "
                                      "differently); use a tokenizer.json without it");
}

// Oniguruma's UTF-8 definitions (doc/RE): \s is U+0009-U+000D, U+0085 and General_Category Z;
// \w is Letter, Mark, Decimal_Number and Connector_Punctuation; \h is a hexadecimal digit.
constexpr const char* kSpaceSet = "\\t-\\r\\x{85}\\p{Z}";
constexpr const char* kWordSet = "\\p{L}\\p{M}\\p{Nd}\\p{Pc}";
constexpr const char* kHexSet = "0-9a-fA-F";

// Copies a `{...}` argument (of \p, \x) starting at pattern[i] == '{'; returns the new index.
size_t CopyBraced(const std::string& p, size_t i, std::string& out, const std::string& where) {
  const size_t close = p.find('}', i);
  if (close == std::string::npos) Unsupported(where, p, "an unterminated {...}");
  out.append(p, i, close - i + 1);
  return close + 1;
}

// Translates the escape at p[i] == '\\'; returns the index after it.
size_t Escape(const std::string& p, size_t i, bool in_class, std::string& out, const std::string& where) {
  if (i + 1 >= p.size()) Unsupported(where, p, "a trailing backslash");
  const char c = p[i + 1];
  auto set = [&](const char* body, bool negated) {
    if (in_class) {
      if (negated) Unsupported(where, p, std::string("\\") + c + " inside a character class");
      out += body;
    } else {
      out += negated ? "[^" : "[";
      out += body;
      out += "]";
    }
    return i + 2;
  };
  switch (c) {
    case 's': return set(kSpaceSet, false);
    case 'S': return set(kSpaceSet, true);
    case 'w': return set(kWordSet, false);
    case 'W': return set(kWordSet, true);
    case 'h': return set(kHexSet, false);
    case 'H': return set(kHexSet, true);
    case 'v': out += "\\x{0B}"; return i + 2;  // a vertical tab in Oniguruma, a class in PCRE2
    case 'd': case 'D': case 't': case 'n': case 'r': case 'f': case 'a': case 'e':
      out += '\\';
      out += c;
      return i + 2;
    case 'p': case 'P': {
      out += '\\';
      out += c;
      if (i + 2 < p.size() && p[i + 2] == '{') return CopyBraced(p, i + 2, out, where);
      if (i + 2 < p.size() && std::isalpha(static_cast<unsigned char>(p[i + 2]))) {
        out += p[i + 2];
        return i + 3;
      }
      Unsupported(where, p, "a malformed \\p");
    }
    case 'x': {
      out += "\\x";
      if (i + 2 < p.size() && p[i + 2] == '{') return CopyBraced(p, i + 2, out, where);
      size_t j = i + 2;
      while (j < p.size() && j < i + 4 && std::isxdigit(static_cast<unsigned char>(p[j]))) out += p[j++];
      return j;
    }
    case 'u': {  // \uHHHH
      if (i + 6 > p.size()) Unsupported(where, p, "a malformed \\u");
      for (size_t j = i + 2; j < i + 6; ++j)
        if (!std::isxdigit(static_cast<unsigned char>(p[j]))) Unsupported(where, p, "a malformed \\u");
      out += "\\x{" + p.substr(i + 2, 4) + "}";
      return i + 6;
    }
    default:
      break;
  }
  if (std::isalnum(static_cast<unsigned char>(c)))
    Unsupported(where, p, std::string("the escape \\") + c);
  out += '\\';
  out += c;  // an escaped punctuation character (or the lead byte of one)
  return i + 2;
}

}  // namespace

std::string OnigToPcre2(const std::string& p, const std::string& where) {
  std::string out;
  out.reserve(p.size() * 2);
  bool in_class = false;
  size_t class_start = 0;  // index just after "[" or "[^"
  size_t i = 0;
  while (i < p.size()) {
    const char c = p[i];
    if (c == '\\') {
      i = Escape(p, i, in_class, out, where);
      continue;
    }
    if (in_class) {
      if (c == ']' && i != class_start) {
        in_class = false;
      } else if (c == '[') {
        Unsupported(where, p, i + 1 < p.size() && p[i + 1] == ':' ? "a POSIX bracket [:...:]" : "a nested character class");
      } else if (c == '&' && i + 1 < p.size() && p[i + 1] == '&') {
        Unsupported(where, p, "a class intersection &&");
      }
      out += c;
      ++i;
      continue;
    }
    switch (c) {
      case '[':
        in_class = true;
        out += c;
        ++i;
        if (i < p.size() && p[i] == '^') out += p[i++];
        class_start = i;
        continue;
      case '^': Unsupported(where, p, "the anchor ^");
      case '$': Unsupported(where, p, "the anchor $");
      case '(':
        if (i + 1 < p.size() && p[i + 1] == '?') {
          const char k = i + 2 < p.size() ? p[i + 2] : '\0';
          const bool plain = k == ':' || k == '=' || k == '!' || k == '>' || k == '#';
          const bool behind = k == '<' && i + 3 < p.size() && (p[i + 3] == '=' || p[i + 3] == '!');
          const bool named = k == '<' && !behind;
          if (!plain && !behind && !named) {
            size_t j = i + 2;  // inline options: only i (case-insensitive) means the same in both
            while (j < p.size() && (p[j] == 'i' || p[j] == '-')) ++j;
            if (j == i + 2 || j >= p.size() || (p[j] != ')' && p[j] != ':'))
              Unsupported(where, p, "the group \"" + p.substr(i, std::min<size_t>(4, p.size() - i)) + "\"");
          }
        }
        break;
      default:
        break;
    }
    out += c;
    ++i;
  }
  if (in_class) Unsupported(where, p, "an unterminated character class");
  return out;
}

struct Regex::Code {
  pcre2_code* code = nullptr;
  ~Code() { pcre2_code_free(code); }
};

namespace {

// Per-thread match data (one pair of offsets is all Search reads) and a large JIT stack
// for the rare pattern that outgrows the default 32 KiB one.
struct ThreadState {
  pcre2_match_data* data = pcre2_match_data_create(1, nullptr);
  pcre2_match_context* big = nullptr;
  pcre2_jit_stack* stack = nullptr;
  ~ThreadState() {
    pcre2_match_data_free(data);
    pcre2_match_context_free(big);
    pcre2_jit_stack_free(stack);
  }
  pcre2_match_context* BigStack() {
    if (!big) {
      stack = pcre2_jit_stack_create(64 * 1024, 16 * 1024 * 1024, nullptr);
      big = pcre2_match_context_create(nullptr);
      if (!stack || !big) throw std::bad_alloc();
      pcre2_jit_stack_assign(big, nullptr, stack);
    }
    return big;
  }
};

ThreadState& State() {
  thread_local ThreadState state;
  if (!state.data) throw std::bad_alloc();
  return state;
}

std::string ErrorText(int rc) {
  PCRE2_UCHAR buf[256];
  if (pcre2_get_error_message(rc, buf, sizeof buf) < 0) return "error " + std::to_string(rc);
  return reinterpret_cast<const char*>(buf);
}

pcre2_code* CompileOrThrow(const std::string& pcre, uint32_t options, const std::string& shown, const std::string& where) {
  pcre2_compile_context* ctx = pcre2_compile_context_create(nullptr);
  if (!ctx) throw std::bad_alloc();
  pcre2_set_newline(ctx, PCRE2_NEWLINE_LF);  // Oniguruma's '.' excludes only '\n'
  int err = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pcre.data()), pcre.size(),
                                   options | PCRE2_UTF | ((options & PCRE2_LITERAL) ? 0 : PCRE2_UCP), &err, &offset, ctx);
  pcre2_compile_context_free(ctx);
  if (!code)
    throw Error(ErrorCode::kBundle, where + ": the regular expression \"" + shown + "\" does not compile (" +
                                        ErrorText(err) + " at offset " + std::to_string(offset) + ")");
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // without a JIT, pcre2_match interprets
  return code;
}

}  // namespace

Regex::Regex(std::unique_ptr<Code> code, std::string source) : code_(std::move(code)), source_(std::move(source)) {}
Regex::~Regex() = default;

std::shared_ptr<const Regex> Regex::Compile(const std::string& pattern, const std::string& where) {
  if (text::FirstInvalidUtf8(pattern) != text::kValid)
    throw Error(ErrorCode::kBundle, where + ": a regular expression is not valid UTF-8");
  auto code = std::make_unique<Code>();
  code->code = CompileOrThrow(OnigToPcre2(pattern, where), 0, pattern, where);
  return std::shared_ptr<const Regex>(new Regex(std::move(code), pattern));
}

std::shared_ptr<const Regex> Regex::Literal(const std::string& text, const std::string& where) {
  if (text::FirstInvalidUtf8(text) != text::kValid)
    throw Error(ErrorCode::kBundle, where + ": a pattern is not valid UTF-8");
  auto code = std::make_unique<Code>();
  code->code = CompileOrThrow(text, PCRE2_LITERAL, text, where);
  return std::shared_ptr<const Regex>(new Regex(std::move(code), text));
}

size_t Regex::CharLenAt(std::string_view text, size_t i) {
  return text::CharLen(static_cast<unsigned char>(text[i]));
}

bool Regex::Search(std::string_view text, size_t from, size_t* start, size_t* end) const {
  ThreadState& st = State();
  auto run = [&](pcre2_match_context* ctx) {
    return pcre2_match(code_->code, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), from,
                       PCRE2_NO_UTF_CHECK, st.data, ctx);
  };
  int rc = run(nullptr);
  if (rc == PCRE2_ERROR_JIT_STACKLIMIT) rc = run(st.BigStack());
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0)
    throw Error(ErrorCode::kInvalidArgument, "the tokenizer's regular expression \"" + source_ +
                                                 "\" gave up on this text (" + ErrorText(rc) + ")");
  const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.data);
  *start = ov[0];
  *end = ov[1];
  return true;
}

void FindMatches(const Regex& re, std::string_view text, std::vector<Span>& out) {
  out.clear();
  if (text.empty()) {
    out.push_back({0, 0, false});
    return;
  }
  size_t prev = 0;
  re.ForEachMatch(text, [&](size_t s, size_t e) {
    if (prev != s) out.push_back({prev, s, false});
    out.push_back({s, e, true});
    prev = e;
  });
  if (prev != text.size()) out.push_back({prev, text.size(), false});
}

}  // namespace tandem::detail
