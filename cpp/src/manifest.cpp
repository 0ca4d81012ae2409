// The manifest reader (tandem/manifest.hpp). Its key tables are its schema: Reader refuses a
// manifest without a key the table reads, and checks that the parse read every such key.
#include "tandem/manifest.hpp"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <span>
#include <stdexcept>

#include "tandem/tandem.hpp"

namespace tandem {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kFormat = "tandem-bundle";

struct Key {
  const char* name;
  bool read;  // false: informational (the exporter writes it, the runtime does not need it)
};

// The top-level keys, and the keys of each graph, that the exporter writes.
constexpr Key kBundleKeys[] = {
    {"format", true}, {"format_version", true}, {"graphs", true}, {"vocab_size", true},
    {"context_length", true}, {"eos_token_ids", true}, {"bos_token_id", true}, {"pad_token_id", true},
    {"tokenizer", true}, {"chat_template", true}, {"special_tokens", true}, {"default_block_length", true},
    {"max_block_length", true}, {"router_threshold", true}, {"precision", true},
    {"build", false}, {"provenance", false}, {"validation", false}};
constexpr Key kGraphKeys[] = {
    {"file", true}, {"num_layers", true}, {"num_kv_heads", true}, {"head_dim", true}, {"hidden_size", true},
    {"vocab_size", true}, {"num_heads", false}, {"input_ids", true}, {"logits", true}, {"seqlens_k", true},
    {"total_sequence_length", true}, {"logits_from", true}, {"past_keys", true}, {"past_values", true},
    {"present_keys", true}, {"present_values", true}, {"rep_layers", true}, {"reps", true},
    {"memory_layers", true}, {"memory", true}, {"memory_size", true}, {"router_score_greedy", true},
    {"router_score_sampled", true},
    {"kv_dtype", true}, {"precision", true}, {"kv_scratch_rows", true}, {"draft_vocab", true},
    {"trained_block_length", true}};

constexpr const char* kRoles[] = {"large", "tandem_drafter", "plain_drafter"};

[[noreturn]] void Fail(const std::string& where, const std::string& what) {
  throw Error(ErrorCode::kBundle, where + ": " + what);
}

template <typename T>
struct IsOptional : std::false_type {};
template <typename T>
struct IsOptional<std::optional<T>> : std::true_type {};

// Reads the keys of one JSON object; each must be a key its table reads.
class Reader {
 public:
  Reader(const json& object, std::string where, std::span<const Key> keys)
      : object_(object), where_(std::move(where)), keys_(keys) {
    if (!object_.is_object()) Fail(where_, "must be a JSON object; re-export the bundle");
  }

  // The value of `key` (a std::optional is empty for null). A missing key or a value of
  // another type is refused.
  template <typename T>
  T Get(const char* key) {
    const auto known = std::find_if(keys_.begin(), keys_.end(), [&](const Key& k) { return std::string(k.name) == key; });
    if (known == keys_.end() || !known->read) throw std::logic_error(std::string("internal: the manifest reader's table does not read \"") + key + "\"");
    read_.insert(key);
    auto it = object_.find(key);
    if (it == object_.end()) Fail(where_, std::string("missing key \"") + key + "\"; re-export the bundle");
    try {
      if constexpr (IsOptional<T>::value) {
        if (it->is_null()) return std::nullopt;
        return it->template get<typename T::value_type>();
      } else {
        return it->template get<T>();
      }
    } catch (const json::exception& e) {
      Fail(where_, std::string("key \"") + key + "\" has the wrong type (" + e.what() + "); re-export the bundle");
    }
  }

  // Every key the table reads was read: the table is the parse's schema.
  void Done() const {
    for (const Key& k : keys_)
      if (k.read && !read_.count(k.name))
        throw std::logic_error(std::string("internal: the manifest reader never reads \"") + k.name + "\"");
  }

  const std::string& where() const { return where_; }

 private:
  const json& object_;
  std::string where_;
  std::span<const Key> keys_;
  std::set<std::string> read_;
};

// Resolves `name` inside `folder`, refusing absolute paths and anything that escapes it.
std::string InsideBundle(const fs::path& folder, const std::string& name, const std::string& where) {
  fs::path rel(name);
  if (name.empty() || rel.is_absolute()) Fail(where, "path \"" + name + "\" must be relative to the bundle");
  std::error_code ec;
  fs::path full = fs::weakly_canonical(folder / rel, ec);
  if (ec) Fail(where, "cannot resolve \"" + name + "\": " + ec.message());
  auto [f_end, _] = std::mismatch(folder.begin(), folder.end(), full.begin(), full.end());
  if (f_end != folder.end()) Fail(where, "path \"" + name + "\" points outside the bundle; refused");
  if (!fs::is_regular_file(full))
    Fail(where, "file \"" + name + "\" is missing from the bundle (copy the whole bundle folder, or re-export it)");
  return full.string();
}

GraphSpec ReadGraph(const json& g, const std::string& role, const fs::path& folder) {
  Reader r(g, "tandem.json graphs." + role, kGraphKeys);
  const std::string& where = r.where();
  GraphSpec s;
  s.role = role;
  s.file = InsideBundle(folder, r.Get<std::string>("file"), where);
  s.num_layers = r.Get<int>("num_layers");
  s.num_kv_heads = r.Get<int>("num_kv_heads");
  s.head_dim = r.Get<int>("head_dim");
  s.hidden_size = r.Get<int>("hidden_size");
  s.vocab_size = r.Get<int64_t>("vocab_size");
  s.input_ids = r.Get<std::string>("input_ids");
  s.logits = r.Get<std::string>("logits");
  s.seqlens_k = r.Get<std::string>("seqlens_k");
  s.total_sequence_length = r.Get<std::string>("total_sequence_length");
  s.logits_from = r.Get<std::string>("logits_from");
  s.past_keys = r.Get<std::vector<std::string>>("past_keys");
  s.past_values = r.Get<std::vector<std::string>>("past_values");
  s.present_keys = r.Get<std::vector<std::string>>("present_keys");
  s.present_values = r.Get<std::vector<std::string>>("present_values");
  s.rep_layers = r.Get<std::vector<int>>("rep_layers");
  s.reps = r.Get<std::vector<std::string>>("reps");
  s.memory_layers = r.Get<std::vector<int>>("memory_layers");
  s.memory = r.Get<std::vector<std::string>>("memory");
  s.memory_size = r.Get<int>("memory_size");
  s.router_score_greedy = r.Get<std::string>("router_score_greedy");
  s.router_score_sampled = r.Get<std::string>("router_score_sampled");
  s.kv_dtype = r.Get<std::string>("kv_dtype");
  s.precision = r.Get<std::string>("precision");
  s.kv_scratch_rows = r.Get<int>("kv_scratch_rows");
  s.draft_vocab = r.Get<std::vector<int64_t>>("draft_vocab");
  s.trained_block_length = r.Get<int>("trained_block_length");
  r.Done();

  if (s.kv_dtype != "float32" && s.kv_dtype != "float16")
    Fail(where, "kv_dtype \"" + s.kv_dtype + "\" is not supported (float32 or float16)");
  if (s.kv_scratch_rows < 0 || s.kv_scratch_rows > 16) Fail(where, "kv_scratch_rows must be in [0, 16]");
  if (s.num_layers < 1 || s.num_kv_heads < 1 || s.head_dim < 1 || s.hidden_size < 1 || s.vocab_size < 2)
    Fail(where, "dims must be positive (num_layers, num_kv_heads, head_dim, hidden_size, vocab_size)");
  // bounds that keep every buffer size computed from them far from overflow
  if (s.num_layers > 4096 || s.num_kv_heads > 4096 || s.head_dim > 65536 || s.hidden_size > (1 << 20) ||
      s.vocab_size > (int64_t{1} << 24) || s.memory_size < 0 || s.memory_size > (1 << 20))
    Fail(where, "dims are out of range (num_layers <= 4096, num_kv_heads <= 4096, head_dim <= 65536, "
                "hidden_size and memory_size <= 2^20, vocab_size <= 2^24)");
  if (s.trained_block_length < 0) Fail(where, "trained_block_length must be >= 0 (0: unknown)");
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
  if (s.router_score_greedy.empty() != s.router_score_sampled.empty())
    Fail(where, "router_score_greedy and router_score_sampled must both name an output or both be empty");
  if (s.has_router()) {
    if (role == "large") Fail(where, "M_L's graph has no routers");
    if (s.router_score_greedy == s.router_score_sampled || s.router_score_greedy == s.logits ||
        s.router_score_sampled == s.logits)
      Fail(where, "router_score_greedy, router_score_sampled and logits must be three different outputs");
  }
  if (role == "tandem_drafter" && s.memory.empty()) Fail(where, "a tandem drafter's graph needs memory inputs");
  if (role != "tandem_drafter" && !s.memory.empty()) Fail(where, "only the tandem drafter's graph takes memory inputs");
  return s;
}

json ParseJson(const fs::path& path) {
  std::ifstream in(path);
  if (!in) throw Error(ErrorCode::kBundle, path.parent_path().string() + " has no tandem.json: is it a tandem bundle?");
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    std::string why = e.what();  // may quote bytes of the file: keep the message ASCII
    for (char& c : why)
      if (static_cast<unsigned char>(c) >= 0x80) c = '?';
    throw Error(ErrorCode::kBundle, path.string() + " is not valid JSON (" + why + "); re-export the bundle");
  }
}

}  // namespace

std::vector<const GraphSpec*> Manifest::graphs() const {
  std::vector<const GraphSpec*> out{&large};
  if (tandem_drafter) out.push_back(&*tandem_drafter);
  if (plain_drafter) out.push_back(&*plain_drafter);
  return out;
}

Manifest ReadManifest(const std::string& folder_in) {
  std::error_code ec;
  if (folder_in.empty() || !fs::is_directory(folder_in, ec))
    throw Error(ErrorCode::kBundle, "bundle folder not found: \"" + folder_in +
                                        "\" (export one with `tandem export`)");
  const fs::path folder = fs::canonical(folder_in, ec);
  if (ec) throw Error(ErrorCode::kBundle, "cannot open bundle folder " + folder_in + ": " + ec.message());
  const fs::path path = folder / "tandem.json";
  const json doc = ParseJson(path);
  const std::string where = path.string();
  if (!doc.is_object() || !doc.contains("format") || doc.at("format") != kFormat)
    Fail(where, std::string("not a tandem manifest (format != \"") + kFormat + "\")");
  Reader r(doc, where, kBundleKeys);
  (void)r.Get<std::string>("format");
  const int version = r.Get<int>("format_version");
  if (version != kManifestFormatVersion)
    Fail(where, "format_version " + std::to_string(version) + " is not supported (this runtime reads " +
                    std::to_string(kManifestFormatVersion) + "); re-export the bundle with this tandem");

  Manifest m;
  m.folder = folder.string();
  const json graphs = r.Get<json>("graphs");
  if (!graphs.is_object() || !graphs.contains("large")) Fail(where, "graphs.large is missing");
  for (auto it = graphs.begin(); it != graphs.end(); ++it) {
    const std::string& role = it.key();
    if (role == kRoles[0]) m.large = ReadGraph(*it, role, folder);
    else if (role == kRoles[1]) m.tandem_drafter = ReadGraph(*it, role, folder);
    else if (role == kRoles[2]) m.plain_drafter = ReadGraph(*it, role, folder);
    else Fail(where, "unknown graph role \"" + role + "\" (expected large, tandem_drafter, plain_drafter)");
  }
  m.vocab_size = r.Get<int64_t>("vocab_size");
  m.context_length = r.Get<int64_t>("context_length");
  m.eos_token_ids = r.Get<std::vector<int64_t>>("eos_token_ids");
  m.bos_token_id = r.Get<std::optional<int64_t>>("bos_token_id");
  m.pad_token_id = r.Get<std::optional<int64_t>>("pad_token_id");
  const std::string tokenizer = r.Get<std::string>("tokenizer");
  if (!tokenizer.empty()) m.tokenizer = InsideBundle(folder, tokenizer, where);
  const std::string chat_template = r.Get<std::string>("chat_template");
  if (!chat_template.empty()) m.chat_template = InsideBundle(folder, chat_template, where + " chat_template");
  m.special_tokens = r.Get<std::map<std::string, std::string>>("special_tokens");
  m.default_block_length = r.Get<int>("default_block_length");
  m.max_block_length = r.Get<int>("max_block_length");
  m.router_threshold = r.Get<float>("router_threshold");
  m.precision = r.Get<std::string>("precision");
  r.Done();

  if (m.context_length < 2 || m.context_length > (int64_t{1} << 24))
    Fail(where, "context_length must be in [2, 2^24]");
  if (m.max_block_length < 1 || m.max_block_length > 1024 || m.default_block_length < 1 ||
      m.default_block_length > m.max_block_length)
    Fail(where, "need 1 <= default_block_length <= max_block_length <= 1024");
  if (!(m.router_threshold >= 0.0f && m.router_threshold < 1e30f)) Fail(where, "router_threshold must be a number >= 0");
  for (const GraphSpec* g : m.graphs())
    if (g->vocab_size != m.vocab_size)
      Fail(where, "graph " + g->role + " has vocab_size " + std::to_string(g->vocab_size) +
                      " but the bundle says " + std::to_string(m.vocab_size));
  for (int64_t eos : m.eos_token_ids)
    if (eos < 0 || eos >= m.vocab_size) Fail(where, "eos_token_ids has " + std::to_string(eos) + ", outside the vocabulary");
  if (m.tandem_drafter) {
    // Every memory input of the tandem drafter must be produced by M_L.
    for (int layer : m.tandem_drafter->memory_layers) {
      if (std::find(m.large.rep_layers.begin(), m.large.rep_layers.end(), layer) == m.large.rep_layers.end())
        Fail(where, "the tandem drafter reads M_L layer " + std::to_string(layer) + " that large.onnx does not output");
    }
    if (m.tandem_drafter->memory_size != m.large.hidden_size)
      Fail(where, "the tandem drafter's memory_size differs from M_L's hidden_size");
  }
  return m;
}

const std::vector<ManifestKey>& ManifestKeys() {
  static const std::vector<ManifestKey> keys = [] {
    std::vector<ManifestKey> out;
    for (const Key& k : kBundleKeys) out.push_back({"bundle", k.name, k.read});
    for (const Key& k : kGraphKeys) out.push_back({"graph", k.name, k.read});
    return out;
  }();
  return keys;
}

}  // namespace tandem
