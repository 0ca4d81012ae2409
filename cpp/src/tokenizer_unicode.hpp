// UTF-8 and Unicode helpers of the tokenizer: validation, Rust's lossy decoding, the
// White_Space property, and Unicode normalization / case mapping (through utf8proc).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace tandem::detail::text {

inline constexpr size_t kValid = static_cast<size_t>(-1);

// Offset of the first byte that makes `s` invalid UTF-8 (overlong forms, surrogates and
// code points above U+10FFFF are invalid, as in Rust's str), or kValid.
size_t FirstInvalidUtf8(std::string_view s) noexcept;

// `bytes` as text, every maximal invalid subsequence replaced by U+FFFD (Rust's
// String::from_utf8_lossy and Python's errors="replace" do the same).
std::string Utf8Lossy(std::string_view bytes);

// Decodes the code point at s[i] of VALID UTF-8 and advances i past it.
inline uint32_t NextChar(std::string_view s, size_t& i) noexcept {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) {
    ++i;
    return b0;
  }
  auto cont = [&](size_t k) { return static_cast<uint32_t>(static_cast<unsigned char>(s[i + k]) & 0x3F); };
  uint32_t cp;
  if (b0 < 0xE0) {
    cp = (uint32_t(b0 & 0x1F) << 6) | cont(1);
    i += 2;
  } else if (b0 < 0xF0) {
    cp = (uint32_t(b0 & 0x0F) << 12) | (cont(1) << 6) | cont(2);
    i += 3;
  } else {
    cp = (uint32_t(b0 & 0x07) << 18) | (cont(1) << 12) | (cont(2) << 6) | cont(3);
    i += 4;
  }
  return cp;
}

// Byte length of the character starting with lead byte `b` (valid UTF-8).
inline size_t CharLen(unsigned char b) noexcept { return b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4; }

void AppendUtf8(std::string& out, uint32_t cp);

// Unicode White_Space (Rust's char::is_whitespace).
bool IsWhitespace(uint32_t cp) noexcept;

enum class NormalForm { kNFC, kNFD, kNFKC, kNFKD };
// Unicode normalization of valid UTF-8 text (utf8proc).
std::string Normalize(std::string_view s, NormalForm form);
// Rust's char::to_lowercase over every character (full mapping of U+0130; no context).
std::string Lowercase(std::string_view s);
// Removes combining marks (general category M).
std::string StripMarks(std::string_view s);
// Unicode general category N (Rust's char::is_numeric).
bool IsNumeric(uint32_t cp) noexcept;

}  // namespace tandem::detail::text
