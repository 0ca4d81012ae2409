// C++ unit tests of the tokenizer's pieces: UTF-8 handling, the Oniguruma -> PCRE2 pattern
// translation and match iteration, and small hand-written tokenizer.json files (BPE merges,
// byte fallback, unk, added tokens, decoders, errors). Token-for-token parity with Hugging
// Face on real tokenizers is tested from Python (tests/test_tokenizer.py).
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <string>
#include <vector>

#include "check.hpp"
#include "tandem/text.hpp"
#include "tandem/text_c.h"
#include "tokenizer_regex.hpp"
#include "tokenizer_unicode.hpp"

using namespace tandem;
using tandem_test::CheckThrows;
using namespace tandem::detail;

namespace {


const std::string kFffd = "\xEF\xBF\xBD";

void TestUtf8() {
  using text::FirstInvalidUtf8;
  using text::kValid;
  CHECK(FirstInvalidUtf8("plain ascii text, longer than eight bytes") == kValid);
  CHECK(FirstInvalidUtf8("h\xC3\xA9llo \xF0\x9F\x8E\x89") == kValid);
  CHECK(FirstInvalidUtf8("abcdefgh\xFF") == 8);
  CHECK(FirstInvalidUtf8("a\xC0\x80") == 1);          // overlong
  CHECK(FirstInvalidUtf8("ab\xED\xA0\x80") == 2);     // a surrogate
  CHECK(FirstInvalidUtf8("\xF4\x90\x80\x80") == 0);   // above U+10FFFF
  CHECK(FirstInvalidUtf8("x\xE2\x82") == 1);          // truncated
  // one U+FFFD per maximal invalid subsequence (Rust's from_utf8_lossy, Python's "replace")
  CHECK(text::Utf8Lossy("a\xF0\x9F\x98") == "a" + kFffd);
  CHECK(text::Utf8Lossy("\xC0\x80") == kFffd + kFffd);
  CHECK(text::Utf8Lossy("\xED\xA0\x80z") == kFffd + kFffd + kFffd + "z");
  CHECK(text::Utf8Lossy("\xE2\x82\xAC\xE2\x82") == "\xE2\x82\xAC" + kFffd);
  CHECK(text::Utf8Lossy("\xF0\x9F\x98x\x80") == kFffd + "x" + kFffd);
  CHECK(text::Normalize("e\xCC\x81", text::NormalForm::kNFC) == "\xC3\xA9");
  CHECK(text::Normalize("\xEF\xAC\x81", text::NormalForm::kNFKC) == "fi");
  CHECK(text::Lowercase("\xC4\xB0X") == "i\xCC\x87x");
}

std::vector<std::pair<size_t, size_t>> Matches(const std::string& pattern, const std::string& text) {
  std::vector<std::pair<size_t, size_t>> out;
  Regex::Compile(pattern, "test")->ForEachMatch(text, [&](size_t s, size_t e) { out.emplace_back(s, e); });
  return out;
}

void TestRegex() {
  using P = std::vector<std::pair<size_t, size_t>>;
  // Oniguruma's \s, \w, \h, \v spelled out for PCRE2
  CHECK(OnigToPcre2(R"(\s+(?!\S))", "t") == R"([\t-\r\x{85}\p{Z}]+(?![^\t-\r\x{85}\p{Z}]))");
  CHECK(OnigToPcre2(R"([^\s\p{L}\p{N}]+)", "t") == R"([^\t-\r\x{85}\p{Z}\p{L}\p{N}]+)");
  CHECK(OnigToPcre2(R"(\w\h\v\u00e9)", "t") == R"([\p{L}\p{M}\p{Nd}\p{Pc}][0-9a-fA-F]\x{0B}\x{00e9})");
  CHECK(OnigToPcre2(R"((?i:'s|'t)[]a])", "t") == R"((?i:'s|'t)[]a])");
  CheckThrows([] { OnigToPcre2("^x", "t"); }, ErrorCode::kBundle, "anchor ^");
  CheckThrows([] { OnigToPcre2("x$", "t"); }, ErrorCode::kBundle, "anchor $");
  CheckThrows([] { OnigToPcre2(R"(\bx)", "t"); }, ErrorCode::kBundle, "\\b");
  CheckThrows([] { OnigToPcre2("[a-z&&[^aeiou]]", "t"); }, ErrorCode::kBundle, "&&");
  CheckThrows([] { OnigToPcre2("[a[bc]]", "t"); }, ErrorCode::kBundle, "nested");
  CheckThrows([] { OnigToPcre2(R"([\S])", "t"); }, ErrorCode::kBundle, "inside a character class");
  CheckThrows([] { OnigToPcre2("(?x) a", "t"); }, ErrorCode::kBundle, "group");
  CheckThrows([] { Regex::Compile("(a", "where"); }, ErrorCode::kBundle, "does not compile");
  // Oniguruma's find_iter: an empty match right after the previous match is skipped
  CHECK((Matches("x*", "axb") == P{{0, 0}, {1, 2}, {3, 3}}));
  CHECK((Matches(R"('s|\s+(?!\S)|\s+| ?\p{L}+)", "it's  ok") == P{{0, 2}, {2, 4}, {4, 5}, {5, 6}, {6, 8}}));  // alternatives in order
  CHECK((Matches(R"(\p{N}{1,3})", "12345") == P{{0, 3}, {3, 5}}));
  CHECK((Matches("(?i:'s)", "'S'\xC5\xBF") == P{{0, 2}, {2, 5}}));  // ſ folds to s
  // \s as Oniguruma: U+0085 yes, U+180E (Cf since Unicode 6.3) no
  CHECK((Matches(R"(\s)", "\xC2\x85\xE1\xA0\x8E") == P{{0, 2}}));
  // a long run of spaces (JIT stack) and a literal pattern
  CHECK((Matches(R"(\s+(?!\S)|\s+)", std::string(200000, ' ') + "x") == P{{0, 199999}, {199999, 200000}}));
  std::vector<std::pair<size_t, size_t>> lit;
  Regex::Literal("a.b", "t")->ForEachMatch("a.bxa.b", [&](size_t s, size_t e) { lit.emplace_back(s, e); });
  CHECK((lit == P{{0, 3}, {4, 7}}));
}

// A tiny tokenizer.json: BPE over characters with byte fallback and special tokens.
std::string TinyJson(const std::string& extra_model = "", const std::string& parts = "") {
  return R"({"version": "1.0", "added_tokens": [
      {"id": 0, "content": "<unk>", "special": true, "normalized": false},
      {"id": 1, "content": "<s>", "special": true, "normalized": false},
      {"id": 9, "content": "<tool>", "special": false, "normalized": false, "lstrip": true}],
    "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "_"},
                                                        {"type": "Replace", "pattern": {"String": " "}, "content": "_"}]},
    "pre_tokenizer": null,
    "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
        {"Sequence": {"id": "A", "type_id": 0}}], "pair": [],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
    "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "_"}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
    )" + parts + R"("model": {"type": "BPE", "unk_token": "<unk>", "byte_fallback": true, "fuse_unk": true,)" +
         extra_model + R"(
      "vocab": {"<unk>": 0, "<s>": 1, "_": 2, "a": 3, "b": 4, "c": 5, "_a": 6, "ab": 7, "_ab": 8,
                "<tool>": 9, "<0xC3>": 10, "<0xA9>": 11},
      "merges": ["_ a", ["a", "b"], "_a b"]}})";
}

void TestTinyTokenizer() {
  auto tok = Tokenizer::FromJson(TinyJson());
  CHECK((tok->Encode("ab c") == std::vector<int64_t>{1, 8, 2, 5}));           // BOS _ab _ c
  CHECK((tok->Encode("ab c", false) == std::vector<int64_t>{8, 2, 5}));
  CHECK((tok->Encode("a\xC3\xA9") == std::vector<int64_t>{1, 6, 10, 11}));    // é by byte fallback
  CHECK((tok->Encode("ax\xE2\x82\xAC", false) == std::vector<int64_t>{6, 0}));  // unknowns fused into one <unk>
  CHECK((tok->Encode("a  <tool>b", false) == std::vector<int64_t>{6, 9, 2, 4}));  // lstrip ate the spaces
  CHECK((tok->Encode("<s>", false) == std::vector<int64_t>{1}));
  CHECK(tok->Encode("", true) == std::vector<int64_t>{1});
  const std::vector<int64_t> ids{1, 8, 2, 5, 10, 11, 9};
  CHECK(tok->Decode(ids) == "ab c\xC3\xA9<tool>");
  CHECK(tok->Decode(ids, false) == "<s> ab c\xC3\xA9<tool>");
  CHECK(tok->Decode(std::vector<int64_t>{6, 10, 99}) == "a" + kFffd);  // a lone byte; 99 is no token
  CHECK(tok->vocab_size() == 12);  // <unk> <s> <tool> are in the vocabulary too
  CHECK(tok->TokenToId("<tool>") == 9 && tok->TokenToId("_ab") == 8 && !tok->TokenToId("zz"));
  CHECK(tok->IdToToken(7) == "ab" && !tok->IdToToken(12));
  CHECK(tok->IsSpecial(1) && !tok->IsSpecial(9) && !tok->IsSpecial(3));
  CheckThrows([&] { tok->Encode("a\xFF"); }, ErrorCode::kInvalidArgument, "not valid UTF-8 (byte 1 of 2");
  CheckThrows([&] { tok->Decode(std::vector<int64_t>{-4}); }, ErrorCode::kInvalidArgument, "out of range");
  // merges apply by rank, leftmost first on ties
  auto ranked = Tokenizer::FromJson(R"({"model": {"type": "BPE", "vocab": {"a": 0, "aa": 1, "b": 2, "ab": 3},
      "merges": [["a", "a"], ["a", "b"]]}})");
  CHECK((ranked->Encode("aaa") == std::vector<int64_t>{1, 0}));
  CHECK((ranked->Encode("aab") == std::vector<int64_t>{1, 2}));
  CHECK((ranked->Encode("ab") == std::vector<int64_t>{3}));
  CHECK(ranked->Decode(std::vector<int64_t>{1, 0}) == "aa a");  // no decoder: tokens joined by spaces
  // a pre-tokenizer and decoder of the byte-level family
  auto bytes = Tokenizer::FromJson(R"({"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": true},
      "decoder": {"type": "ByteLevel"}, "model": {"type": "BPE", "vocab": {"\u0120": 0, "a": 1, "\u0120a": 2},
      "merges": ["\u0120 a"]}})");
  CHECK((bytes->Encode("a a") == std::vector<int64_t>{2, 2}));
  CHECK(bytes->Decode(std::vector<int64_t>{2, 2}) == " a a");
}

void TestRefusals() {
  CheckThrows([] { Tokenizer::FromJson("{"); }, ErrorCode::kBundle, "not valid JSON");
  CheckThrows([] { Tokenizer::FromJson("[]"); }, ErrorCode::kBundle, "expected a JSON object");
  CheckThrows([] { Tokenizer::FromJson(R"({"model": {"type": "Unigram", "vocab": []}})"); }, ErrorCode::kBundle,
              "model \"Unigram\"");
  CheckThrows([] { Tokenizer::FromJson(TinyJson(R"("dropout": 0.1,)")); }, ErrorCode::kBundle, "dropout");
  CheckThrows([] { Tokenizer::FromJson(TinyJson(R"("continuing_subword_prefix": "##",)")); }, ErrorCode::kBundle,
              "continuing_subword_prefix");
  CheckThrows([] { Tokenizer::FromJson(TinyJson("", R"("pre_tokenizer": {"type": "UnicodeScripts"},)")); },
              ErrorCode::kBundle, "pre_tokenizer \"UnicodeScripts\"");
  CheckThrows([] { Tokenizer::FromJson(R"({"model": {"vocab": {"a": 0}, "merges": ["a b"]}})"); }, ErrorCode::kBundle,
              "not in the vocabulary");
  CheckThrows([] { Tokenizer::FromJson(R"({"model": {"vocab": {"a": 99999999}, "merges": []}})"); },
              ErrorCode::kBundle, "out of range");
  CheckThrows([] { Tokenizer::Load("/nonexistent/tokenizer.json"); }, ErrorCode::kBundle, "cannot read");
}

// Incremental text: never half a character, never the start of a stop string; the pieces
// add up to the decoded text, cut before the first stop string.
void TestDetokenizer() {
  auto tok = Tokenizer::FromJson(TinyJson());
  {
    Detokenizer d(tok);
    CHECK(d.Push(std::vector<int64_t>{6}) == "a");
    CHECK(d.Push(std::vector<int64_t>{10}).empty());  // <0xC3>: the first byte of é
    CHECK(d.Push(std::vector<int64_t>{11}).empty());  // a byte run is known once a token ends it
    CHECK(d.Push(std::vector<int64_t>{1}) == "\xC3\xA9");  // <s> (skipped) ends it
    CHECK(d.Push(std::vector<int64_t>{8, 2, 5}) == " ab c");
    CHECK(d.Push(std::vector<int64_t>{10}).empty());
    CHECK(d.Finish() == kFffd);  // a byte that never completed
    CHECK(d.text() == "a\xC3\xA9 ab c" + kFffd);
    CHECK(d.text() == tok->Decode(d.ids()));
    CHECK(d.ids().size() == 8 && !d.stopped());
  }
  {
    Detokenizer d(tok, {"b c", "zz"});
    std::string out = d.Push(std::vector<int64_t>{8});  // "ab": its "b" may start "b c"
    CHECK(out == "a");
    out += d.Push(std::vector<int64_t>{2});             // "ab " still may
    CHECK(out == "a");
    out += d.Push(std::vector<int64_t>{5});             // "ab c": stop
    CHECK(out == "a" && d.stopped() && d.text() == "a");
    CHECK(d.Push(std::vector<int64_t>{3}).empty() && d.Finish().empty());
  }
  {
    Detokenizer d(tok, {"b cx"});
    std::string out = d.Push(std::vector<int64_t>{8, 2, 5});  // "ab c" could still become the stop
    CHECK(out == "a");
    out += d.Finish();  // it cannot any more
    CHECK(out == "ab c" && d.text() == "ab c" && !d.stopped());
  }
  {
    Detokenizer none(nullptr);
    CHECK(none.Push(std::vector<int64_t>{1, 2, 3}).empty() && none.Finish().empty() && none.ids().size() == 3);
  }
  CheckThrows([] { Detokenizer(nullptr, {"x"}); }, ErrorCode::kInvalidArgument, "need the bundle's tokenizer");
  CheckThrows([&] { Detokenizer(tok, {""}); }, ErrorCode::kInvalidArgument, "non-empty");
  CheckThrows([&] { Detokenizer(tok, {"\xFF"}); }, ErrorCode::kInvalidArgument, "not valid UTF-8");
}

// The C text API's tokenizer calls: buffer sizes, statuses, errors.
void TestCTokenizer() {
  const auto path = std::filesystem::temp_directory_path() / "tandem_tokenizer_test.json";
  {
    std::ofstream(path) << TinyJson();
  }
  tandem_tokenizer* tok = nullptr;
  CHECK(tandem_tokenizer_load("/nonexistent.json", &tok) == TANDEM_ERR_BUNDLE && tok == nullptr);
  CHECK(std::string(tandem_last_error()).find("cannot read") != std::string::npos);
  CHECK(tandem_tokenizer_load(nullptr, &tok) == TANDEM_ERR_INVALID_ARGUMENT);
  CHECK(tandem_tokenizer_load(path.c_str(), &tok) == TANDEM_OK && tok != nullptr);
  CHECK(std::string(tandem_last_error()).empty());
  int64_t ids[8];
  size_t n = 99;
  CHECK(tandem_tokenizer_encode(tok, "ab c", 4, 1, ids, 2, &n) == TANDEM_OK && n == 4);  // did not fit
  CHECK(ids[0] == 1 && ids[1] == 8);
  CHECK(tandem_tokenizer_encode(tok, "ab c", 4, 0, nullptr, 0, &n) == TANDEM_OK && n == 3);
  CHECK(tandem_tokenizer_encode(tok, "ab c", 4, 0, ids, 8, &n) == TANDEM_OK && n == 3 && ids[2] == 5);
  CHECK(tandem_tokenizer_encode(tok, "a\xFF", 2, 1, ids, 8, &n) == TANDEM_ERR_INVALID_ARGUMENT && n == 0);
  CHECK(std::string(tandem_last_error()).find("not valid UTF-8") != std::string::npos);
  const int64_t some[] = {1, 8, 2, 5};
  char text[16];
  size_t bytes = 0;
  CHECK(tandem_tokenizer_decode(tok, some, 4, 1, text, 4, &bytes) == TANDEM_OK && bytes == 4);  // no room for NUL
  CHECK(tandem_tokenizer_decode(tok, some, 4, 1, text, 5, &bytes) == TANDEM_OK && std::string(text) == "ab c");
  CHECK(tandem_tokenizer_decode(tok, some, 4, 0, text, sizeof text, &bytes) == TANDEM_OK &&
        std::string(text) == "<s> ab c");
  const int64_t negative[] = {-1};
  CHECK(tandem_tokenizer_decode(tok, negative, 1, 1, text, sizeof text, &bytes) == TANDEM_ERR_INVALID_ARGUMENT);
  CHECK(tandem_tokenizer_encode(nullptr, "a", 1, 1, ids, 8, &n) == TANDEM_ERR_INVALID_ARGUMENT);
  CHECK(tandem_generate_text(nullptr, tok, "a", 1, nullptr, nullptr, nullptr, nullptr, nullptr) ==
        TANDEM_ERR_INVALID_ARGUMENT);
  tandem_tokenizer_free(tok);
  tandem_tokenizer_free(nullptr);
  std::filesystem::remove(path);
}

}  // namespace

int main() {
  TestUtf8();
  TestRegex();
  TestTinyTokenizer();
  TestRefusals();
  TestDetokenizer();
  TestCTokenizer();
  return tandem_test::Summary();
}
