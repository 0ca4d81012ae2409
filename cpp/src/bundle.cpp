#include "bundle.hpp"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "tandem/tandem.hpp"

namespace tandem::detail {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kFormat = "tandem-bundle";
constexpr int kFormatVersion = 2;

[[noreturn]] void Fail(const std::string& where, const std::string& what) {
  throw Error(ErrorCode::kBundle, where + ": " + what);
}

template <typename T>
T Get(const json& obj, const char* key, const std::string& where) {
  auto it = obj.find(key);
  if (it == obj.end()) Fail(where, std::string("missing key \"") + key + "\"; re-export the bundle");
  try {
    return it->get<T>();
  } catch (const json::exception& e) {
    Fail(where, std::string("key \"") + key + "\" has the wrong type (" + e.what() + ")");
  }
}

template <typename T>
T GetOr(const json& obj, const char* key, T fallback, const std::string& where) {
  return obj.contains(key) && !obj.at(key).is_null() ? Get<T>(obj, key, where) : fallback;
}

// Resolves `name` inside `folder`, refusing absolute paths and anything that escapes it.
std::string InsideBundle(const fs::path& folder, const std::string& name, const std::string& where) {
  fs::path rel(name);
  if (name.empty() || rel.is_absolute()) Fail(where, "path \"" + name + "\" must be relative to the bundle");
  std::error_code ec;
  fs::path full = fs::weakly_canonical(folder / rel, ec);
  if (ec) Fail(where, "cannot resolve \"" + name + "\": " + ec.message());
  auto [f_end, _] = std::mismatch(folder.begin(), folder.end(), full.begin(), full.end());
  if (f_end != folder.end()) Fail(where, "path \"" + name + "\" points outside the bundle; refused");
  if (!fs::is_regular_file(full)) Fail(where, "file \"" + name + "\" is missing from the bundle");
  return full.string();
}

GraphSpec ParseGraph(const json& g, const std::string& role, const fs::path& folder) {
  const std::string where = "tandem.json graphs." + role;
  if (!g.is_object()) Fail(where, "must be an object");
  GraphSpec s;
  s.role = role;
  s.file = InsideBundle(folder, Get<std::string>(g, "file", where), where);
  s.num_layers = Get<int>(g, "num_layers", where);
  s.num_kv_heads = Get<int>(g, "num_kv_heads", where);
  s.head_dim = Get<int>(g, "head_dim", where);
  s.hidden_size = Get<int>(g, "hidden_size", where);
  s.vocab_size = Get<int64_t>(g, "vocab_size", where);
  s.input_ids = Get<std::string>(g, "input_ids", where);
  s.logits = Get<std::string>(g, "logits", where);
  s.seqlens_k = Get<std::string>(g, "seqlens_k", where);
  s.total_sequence_length = Get<std::string>(g, "total_sequence_length", where);
  s.logits_from = Get<std::string>(g, "logits_from", where);
  s.past_keys = Get<std::vector<std::string>>(g, "past_keys", where);
  s.past_values = Get<std::vector<std::string>>(g, "past_values", where);
  s.present_keys = Get<std::vector<std::string>>(g, "present_keys", where);
  s.present_values = Get<std::vector<std::string>>(g, "present_values", where);
  s.rep_layers = GetOr<std::vector<int>>(g, "rep_layers", {}, where);
  s.reps = GetOr<std::vector<std::string>>(g, "reps", {}, where);
  s.memory_layers = GetOr<std::vector<int>>(g, "memory_layers", {}, where);
  s.memory = GetOr<std::vector<std::string>>(g, "memory", {}, where);
  s.memory_size = GetOr<int>(g, "memory_size", 0, where);
  s.router_score = GetOr<std::string>(g, "router_score", "", where);
  const std::string kv_dtype = GetOr<std::string>(g, "kv_dtype", "float32", where);
  if (kv_dtype != "float32" && kv_dtype != "float16")
    Fail(where, "kv_dtype \"" + kv_dtype + "\" is not supported (float32 or float16)");
  s.kv_fp16 = kv_dtype == "float16";
  s.kv_scratch_rows = GetOr<int>(g, "kv_scratch_rows", 0, where);
  if (s.kv_scratch_rows < 0 || s.kv_scratch_rows > 16) Fail(where, "kv_scratch_rows must be in [0, 16]");
  s.draft_vocab = GetOr<std::vector<int64_t>>(g, "draft_vocab", {}, where);
  if (s.num_layers < 1 || s.num_kv_heads < 1 || s.head_dim < 1 || s.hidden_size < 1 || s.vocab_size < 2)
    Fail(where, "dims must be positive (num_layers, num_kv_heads, head_dim, hidden_size, vocab_size)");
  // bounds that keep every buffer size computed from them far from overflow
  if (s.num_layers > 4096 || s.num_kv_heads > 4096 || s.head_dim > 65536 || s.hidden_size > (1 << 20) ||
      s.vocab_size > (int64_t{1} << 24) || s.memory_size < 0 || s.memory_size > (1 << 20))
    Fail(where, "dims are out of range (num_layers <= 4096, num_kv_heads <= 4096, head_dim <= 65536, "
                "hidden_size and memory_size <= 2^20, vocab_size <= 2^24)");
  const size_t n = static_cast<size_t>(s.num_layers);
  if (s.past_keys.size() != n || s.past_values.size() != n || s.present_keys.size() != n ||
      s.present_values.size() != n)
    Fail(where, "past/present name lists must have num_layers entries");
  if (s.rep_layers.size() != s.reps.size()) Fail(where, "rep_layers and reps differ in length");
  if (s.memory_layers.size() != s.memory.size()) Fail(where, "memory_layers and memory differ in length");
  if (!s.draft_vocab.empty()) {
    if (role == "large") Fail(where, "M_L's graph cannot have a draft vocabulary");
    if (s.draft_vocab.size() < 2) Fail(where, "draft_vocab needs at least 2 token ids");
    for (size_t i = 0; i < s.draft_vocab.size(); ++i)
      if (s.draft_vocab[i] < 0 || s.draft_vocab[i] >= s.vocab_size || (i > 0 && s.draft_vocab[i] <= s.draft_vocab[i - 1]))
        Fail(where, "draft_vocab must hold ascending token ids inside the vocabulary");
  }
  if (role == "small" && s.memory.empty()) Fail(where, "a tandem step graph needs memory inputs");
  if (role != "small" && !s.memory.empty()) Fail(where, "only the small graph takes memory inputs");
  return s;
}

}  // namespace

Manifest LoadManifest(const std::string& folder_in) {
  std::error_code ec;
  if (folder_in.empty() || !fs::is_directory(folder_in, ec))
    throw Error(ErrorCode::kBundle, "bundle folder not found: \"" + folder_in +
                                        "\" (export one with `tandem export`)");
  fs::path folder = fs::canonical(folder_in, ec);
  if (ec) throw Error(ErrorCode::kBundle, "cannot open bundle folder " + folder_in + ": " + ec.message());
  fs::path path = folder / "tandem.json";
  std::ifstream in(path);
  if (!in) throw Error(ErrorCode::kBundle, folder.string() + " has no tandem.json: is it a tandem bundle?");
  json doc;
  try {
    doc = json::parse(in);
  } catch (const json::exception& e) {
    std::string why = e.what();  // may quote bytes of the file: keep the message ASCII
    for (char& c : why)
      if (static_cast<unsigned char>(c) >= 0x80) c = '?';
    throw Error(ErrorCode::kBundle, path.string() + " is not valid JSON (" + why + "); re-export the bundle");
  }
  const std::string where = path.string();
  if (!doc.is_object() || GetOr<std::string>(doc, "format", "", where) != kFormat)
    Fail(where, std::string("not a tandem manifest (format != \"") + kFormat + "\")");
  int version = Get<int>(doc, "format_version", where);
  if (version != kFormatVersion)
    Fail(where, "format_version " + std::to_string(version) + " is not supported (this runtime reads " +
                    std::to_string(kFormatVersion) + "); re-export the bundle");

  Manifest m;
  m.folder = folder.string();
  const json& graphs = doc.contains("graphs") ? doc.at("graphs") : json();
  if (!graphs.is_object() || !graphs.contains("large")) Fail(where, "graphs.large is missing");
  for (auto it = graphs.begin(); it != graphs.end(); ++it) {
    const std::string& role = it.key();
    if (role == "large") m.large = ParseGraph(*it, role, folder);
    else if (role == "small") m.small = ParseGraph(*it, role, folder);
    else if (role == "draft") m.draft = ParseGraph(*it, role, folder);
    else Fail(where, "unknown graph role \"" + role + "\" (expected large, small, draft)");
  }
  m.vocab_size = Get<int64_t>(doc, "vocab_size", where);
  m.context_length = Get<int64_t>(doc, "context_length", where);
  m.eos_token_ids = GetOr<std::vector<int64_t>>(doc, "eos_token_ids", {}, where);
  m.default_block_length = GetOr<int>(doc, "default_block_length", 4, where);
  m.max_block_length = GetOr<int>(doc, "max_block_length", 16, where);
  m.router_threshold = GetOr<float>(doc, "router_threshold", 0.8f, where);
  std::string tok = GetOr<std::string>(doc, "tokenizer", "", where);
  if (!tok.empty()) m.tokenizer = InsideBundle(folder, tok, where);

  if (m.context_length < 2 || m.context_length > (int64_t{1} << 24))
    Fail(where, "context_length must be in [2, 2^24]");
  if (m.max_block_length < 1 || m.max_block_length > 1024 || m.default_block_length < 1 ||
      m.default_block_length > m.max_block_length)
    Fail(where, "need 1 <= default_block_length <= max_block_length <= 1024");
  for (const GraphSpec* g : {&m.large, m.small ? &*m.small : nullptr, m.draft ? &*m.draft : nullptr}) {
    if (!g) continue;
    if (g->vocab_size != m.vocab_size)
      Fail(where, "graph " + g->role + " has vocab_size " + std::to_string(g->vocab_size) +
                      " but the bundle says " + std::to_string(m.vocab_size));
  }
  for (int64_t eos : m.eos_token_ids)
    if (eos < 0 || eos >= m.vocab_size) Fail(where, "eos_token_ids has " + std::to_string(eos) + ", outside the vocabulary");
  if (m.small) {
    // Every memory input of M_S must be produced by M_L.
    for (int layer : m.small->memory_layers) {
      if (std::find(m.large.rep_layers.begin(), m.large.rep_layers.end(), layer) == m.large.rep_layers.end())
        Fail(where, "small graph reads M_L layer " + std::to_string(layer) + " that large.onnx does not output");
    }
    if (m.small->memory_size != m.large.hidden_size)
      Fail(where, "small graph memory_size differs from M_L hidden_size");
  }
  return m;
}

}  // namespace tandem::detail
