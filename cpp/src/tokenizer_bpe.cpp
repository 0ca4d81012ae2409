#include "tokenizer_bpe.hpp"

#include <algorithm>
#include <cstdio>

#include "tandem/tandem.hpp"
#include "tokenizer_unicode.hpp"

namespace tandem::detail {
namespace {

struct ByteLevelTables {
  std::array<uint32_t, 256> to_char{};
  std::unordered_map<uint32_t, int> to_byte;
  ByteLevelTables() {
    // printable Latin-1 bytes stand for themselves; the others get U+0100 onwards in order
    std::array<bool, 256> direct{};
    for (int b = '!'; b <= '~'; ++b) direct[b] = true;
    for (int b = 0xA1; b <= 0xAC; ++b) direct[b] = true;
    for (int b = 0xAE; b <= 0xFF; ++b) direct[b] = true;
    uint32_t n = 0;
    for (int b = 0; b < 256; ++b) to_char[b] = direct[b] ? static_cast<uint32_t>(b) : 256 + n++;
    for (int b = 0; b < 256; ++b) to_byte[to_char[b]] = b;
  }
};

const ByteLevelTables& Tables() {
  static const ByteLevelTables tables;
  return tables;
}

}  // namespace

uint32_t ByteLevelChar(unsigned char b) noexcept { return Tables().to_char[b]; }

int ByteLevelByte(uint32_t cp) noexcept {
  const auto& m = Tables().to_byte;
  auto it = m.find(cp);
  return it == m.end() ? -1 : it->second;
}

void AppendByteLevel(std::string& out, std::string_view bytes) {
  const auto& t = Tables().to_char;
  for (unsigned char b : bytes) text::AppendUtf8(out, t[b]);
}

// (left id, right id) -> (rank, merged id): open addressing over 64-bit keys.
struct BpeModel::MergeTable {
  struct Slot {
    uint64_t key = kEmpty;
    uint32_t rank = 0;
    int32_t id = 0;
  };
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  std::vector<Slot> slots;
  uint64_t mask = 0;

  explicit MergeTable(size_t n) {
    size_t cap = 16;
    while (cap < 2 * n + 2) cap <<= 1;
    slots.resize(cap);
    mask = cap - 1;
  }
  static uint64_t Key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
  static uint64_t Hash(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return k;
  }
  void Put(int32_t a, int32_t b, uint32_t rank, int32_t id) {  // a later duplicate wins, as in HF
    const uint64_t k = Key(a, b);
    for (uint64_t i = Hash(k) & mask;; i = (i + 1) & mask) {
      if (slots[i].key == kEmpty || slots[i].key == k) {
        slots[i] = {k, rank, id};
        return;
      }
    }
  }
  const Slot* Get(int32_t a, int32_t b) const {
    const uint64_t k = Key(a, b);
    for (uint64_t i = Hash(k) & mask;; i = (i + 1) & mask) {
      if (slots[i].key == k) return &slots[i];
      if (slots[i].key == kEmpty) return nullptr;
    }
  }
};

// Words already tokenized, in shards with their own locks (one Tokenizer serves many threads).
struct BpeModel::Cache {
  static constexpr size_t kShards = 16;
  static constexpr size_t kMaxWordBytes = 256;  // HF's MAX_LENGTH
  struct Shard {
    std::mutex mutex;
    std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> words;
  };
  std::array<Shard, kShards> shards;
  size_t per_shard;
  explicit Cache(size_t capacity) : per_shard((capacity + kShards - 1) / kShards) {}
  Shard& For(size_t hash) { return shards[(hash >> 7) % kShards]; }
};

BpeModel::BpeModel(StringIdMap vocab, const std::vector<std::pair<std::string, std::string>>& merges,
                   BpeOptions options, const std::string& where)
    : vocab_(std::move(vocab)), options_(std::move(options)) {
  int32_t max_id = -1;
  for (const auto& [token, id] : vocab_) max_id = std::max(max_id, id);
  vocab_r_.assign(static_cast<size_t>(max_id + 1), nullptr);
  for (const auto& [token, id] : vocab_) {
    // several tokens with one id: HF keeps one of them; keep the smallest, deterministically
    const std::string*& slot = vocab_r_[static_cast<size_t>(id)];
    if (!slot || token < *slot) slot = &token;
  }
  merges_ = std::make_unique<MergeTable>(merges.size());
  std::string merged;
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [a, b] = merges[rank];
    auto ia = vocab_.find(a), ib = vocab_.find(b);
    if (ia == vocab_.end() || ib == vocab_.end())
      throw Error(ErrorCode::kBundle, where + ": merge " + std::to_string(rank) + " (\"" + a + "\" \"" + b +
                                          "\") names a token that is not in the vocabulary; the file is corrupt");
    merged.assign(a);
    merged += b;
    auto im = vocab_.find(merged);
    if (im == vocab_.end())
      throw Error(ErrorCode::kBundle, where + ": merge " + std::to_string(rank) + " makes \"" + merged +
                                          "\", which is not in the vocabulary; the file is corrupt");
    merges_->Put(ia->second, ib->second, static_cast<uint32_t>(rank), im->second);
  }
  if (options_.unk_token) {
    auto it = vocab_.find(*options_.unk_token);
    if (it == vocab_.end())
      throw Error(ErrorCode::kBundle, where + ": unk_token \"" + *options_.unk_token +
                                          "\" is not in the vocabulary; the file is corrupt");
    unk_id_ = it->second;
  }
  std::string s;
  for (int b = 0; b < 256; ++b) {
    s.clear();
    text::AppendUtf8(s, ByteLevelChar(static_cast<unsigned char>(b)));
    auto it = vocab_.find(s);
    byte_level_ids_[b] = it == vocab_.end() ? -1 : it->second;
    char code[8];
    std::snprintf(code, sizeof code, "<0x%02X>", b);
    it = vocab_.find(std::string_view(code));
    fallback_ids_[b] = it == vocab_.end() ? -1 : it->second;
  }
  for (int c = 0; c < 128; ++c) {
    const char ch = static_cast<char>(c);
    auto it = vocab_.find(std::string_view(&ch, 1));
    ascii_ids_[c] = it == vocab_.end() ? -1 : it->second;
  }
  if (options_.cache_capacity > 0) cache_ = std::make_unique<Cache>(options_.cache_capacity);
}

BpeModel::~BpeModel() = default;

std::optional<int32_t> BpeModel::TokenToId(std::string_view token) const {
  auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::IdToToken(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= vocab_r_.size()) return nullptr;
  return vocab_r_[static_cast<size_t>(id)];
}

void BpeModel::Tokenize(std::string_view word, bool byte_level, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (options_.ignore_merges) {  // a word that is a token is that token (Llama 3)
    std::optional<int32_t> whole;
    if (byte_level) {
      thread_local std::string mapped;
      mapped.clear();
      AppendByteLevel(mapped, word);
      whole = TokenToId(mapped);
    } else {
      whole = TokenToId(word);
    }
    if (whole) {
      out.push_back(*whole);
      return;
    }
  }
  if (!cache_ || word.size() >= Cache::kMaxWordBytes) {
    MergeWord(word, byte_level, out);
    return;
  }
  const size_t hash = StringHash{}(word);
  Cache::Shard& shard = cache_->For(hash);
  {
    std::lock_guard<std::mutex> lock(shard.mutex);
    auto it = shard.words.find(word);
    if (it != shard.words.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t first = out.size();
  MergeWord(word, byte_level, out);
  std::lock_guard<std::mutex> lock(shard.mutex);
  if (shard.words.size() < cache_->per_shard)
    shard.words.try_emplace(std::string(word), out.begin() + static_cast<std::ptrdiff_t>(first), out.end());
}

void BpeModel::MergeWord(std::string_view word, bool byte_level, std::vector<int32_t>& out) const {
  struct Symbol {
    int32_t id;
    int32_t prev, next;
    int32_t len;  // 0: merged into its left neighbour
  };
  thread_local std::vector<Symbol> symbols;
  thread_local std::string unit;
  symbols.clear();
  auto add = [&](int32_t id, size_t len) {
    const auto n = static_cast<int32_t>(symbols.size());
    if (n > 0) symbols.back().next = n;
    symbols.push_back({id, n - 1, -1, static_cast<int32_t>(len)});
  };
  int32_t unk_id = -1;  // pending unknown characters: the unk token and their bytes
  size_t unk_len = 0;
  size_t i = 0;
  while (i < word.size()) {
    const size_t start = i;
    int32_t id = -1;
    if (byte_level) {
      id = byte_level_ids_[static_cast<unsigned char>(word[i])];
      ++i;
    } else {
      const auto b = static_cast<unsigned char>(word[i]);
      if (b < 0x80) {
        id = ascii_ids_[b];
        ++i;
      } else {
        i += text::CharLen(b);
        if (auto found = TokenToId(word.substr(start, i - start))) id = *found;
      }
    }
    const size_t byte_len = i - start;
    if (id >= 0) {
      if (unk_id >= 0) {
        add(unk_id, unk_len);
        unk_id = -1;
      }
      add(id, byte_len);
      continue;
    }
    if (options_.byte_fallback) {
      // the bytes of the character as the vocabulary spells it (mapped, for byte-level words)
      unit.clear();
      if (byte_level) AppendByteLevel(unit, word.substr(start, byte_len));
      else unit.assign(word.substr(start, byte_len));
      bool all = true;
      for (unsigned char b : unit) all = all && fallback_ids_[b] >= 0;
      if (all) {
        // (HF adds these before a pending unk token; kept as it is)
        for (unsigned char b : unit) add(fallback_ids_[b], 1);
        continue;
      }
    }
    if (unk_id_) {
      if (unk_id >= 0 && options_.fuse_unk) {
        unk_len += byte_len;
      } else {
        if (unk_id >= 0) add(unk_id, unk_len);
        unk_id = *unk_id_;
        unk_len = byte_len;
      }
    }
    // no unk token: the character is dropped, as in HF
  }
  if (unk_id >= 0) add(unk_id, unk_len);

  // merges: lowest rank first, leftmost on ties; stale queue entries are skipped
  struct Merge {
    int32_t pos;
    uint32_t rank;
    int32_t id;
    bool operator<(const Merge& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  thread_local std::vector<Merge> queue;
  queue.clear();
  for (size_t k = 0; k + 1 < symbols.size(); ++k)
    if (const auto* m = merges_->Get(symbols[k].id, symbols[k + 1].id))
      queue.push_back({static_cast<int32_t>(k), m->rank, m->id});
  std::make_heap(queue.begin(), queue.end());
  while (!queue.empty()) {
    std::pop_heap(queue.begin(), queue.end());
    const Merge top = queue.back();
    queue.pop_back();
    Symbol& cur = symbols[static_cast<size_t>(top.pos)];
    if (cur.len == 0 || cur.next == -1) continue;
    const auto next_pos = static_cast<size_t>(cur.next);
    const Symbol right = symbols[next_pos];
    const auto* m = merges_->Get(cur.id, right.id);
    if (!m || m->id != top.id) continue;  // a stale entry
    cur.id = top.id;
    cur.len += right.len;
    cur.next = right.next;
    symbols[next_pos].len = 0;
    if (right.next >= 0) symbols[static_cast<size_t>(right.next)].prev = top.pos;
    if (cur.prev >= 0) {
      const Symbol& prev = symbols[static_cast<size_t>(cur.prev)];
      if (const auto* pm = merges_->Get(prev.id, cur.id)) {
        queue.push_back({cur.prev, pm->rank, pm->id});
        std::push_heap(queue.begin(), queue.end());
      }
    }
    if (cur.next >= 0) {
      const Symbol& next = symbols[static_cast<size_t>(cur.next)];
      if (const auto* nm = merges_->Get(cur.id, next.id)) {
        queue.push_back({top.pos, nm->rank, nm->id});
        std::push_heap(queue.begin(), queue.end());
      }
    }
  }
  for (const Symbol& s : symbols)
    if (s.len != 0) out.push_back(s.id);
}

}  // namespace tandem::detail
