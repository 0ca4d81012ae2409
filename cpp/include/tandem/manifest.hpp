// The bundle manifest (tandem.json) as the runtime reads it: the one reader of a bundle's
// description, used by Model::Load and, through the Python binding, by the Python side.
//
// The exporter writes the manifest (tandem/manifest.py: the writer's schema and the only
// defaults); this reader requires every key it reads, so a manifest means what the exporter
// wrote or is refused. tests/test_manifest_schema.py holds the writer's keys against
// ManifestKeys(). docs/CONTRACTS.md "Bundle" describes the format.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace tandem {

// The format this runtime reads (tandem.json "format_version"); another is refused with
// "re-export the bundle".
inline constexpr int kManifestFormatVersion = 4;

// One ONNX graph of a bundle: its file, dims and I/O names (docs/CONTRACTS.md "Graphs").
struct GraphSpec {
  std::string role;  // "large" | "tandem_drafter" | "plain_drafter"
  std::string file;  // absolute path, checked to lie inside the bundle
  int num_layers = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int hidden_size = 0;
  int64_t vocab_size = 0;
  std::string input_ids, logits;
  std::string seqlens_k, total_sequence_length, logits_from;  // GroupQueryAttention lengths, logits rows
  std::vector<std::string> past_keys, past_values, present_keys, present_values;
  std::vector<int> rep_layers;       // large: M_L layer index of each reps output
  std::vector<std::string> reps;
  std::vector<int> memory_layers;    // tandem drafter: M_L layer index of each memory input
  std::vector<std::string> memory;
  int memory_size = 0;
  // Drafters: the routers' score outputs ([1, rows] float32 each), both or neither ("": no
  // routers). The loop reads the greedy one when decoding greedily, the sampled one when sampling.
  std::string router_score_greedy, router_score_sampled;
  std::string kv_dtype;              // the KV buffers' element type: "float32" | "float16"
  std::string precision;             // the weights: "fp32" | "fp16" | "int8" | "int4"
  int kv_scratch_rows = 0;           // rows the graph writes past a call's rows (buffer room only)
  std::vector<int64_t> draft_vocab;  // drafters: token id of each logits column (ascending); empty: all
  int trained_block_length = 0;      // drafters: the γ the drafter was trained at; 0: unknown

  bool kv_fp16() const { return kv_dtype == "float16"; }
  bool has_router() const { return !router_score_greedy.empty(); }
  // The router score output a decoding mode reads: the sampled router's when sampling.
  const std::string& router_score(bool do_sample) const { return do_sample ? router_score_sampled : router_score_greedy; }
  int64_t logits_size() const { return draft_vocab.empty() ? vocab_size : static_cast<int64_t>(draft_vocab.size()); }
};

struct Manifest {
  std::string folder;  // canonical bundle folder
  GraphSpec large;
  std::optional<GraphSpec> tandem_drafter;  // modes tandem, speed
  std::optional<GraphSpec> plain_drafter;   // mode vanilla
  int64_t vocab_size = 0;
  int64_t context_length = 0;
  std::vector<int64_t> eos_token_ids;
  std::optional<int64_t> bos_token_id, pad_token_id;
  std::string tokenizer;      // absolute path of tokenizer.json, or "" (token ids only)
  std::string chat_template;  // absolute path of M_L's Jinja chat template, or "" (no chat)
  std::map<std::string, std::string> special_tokens;  // the named special tokens a template reads
  int default_block_length = 0;
  int max_block_length = 0;
  float router_threshold = 0.0f;
  std::string precision;

  // The graphs the bundle has, M_L first.
  std::vector<const GraphSpec*> graphs() const;
};

// Reads and checks <folder>/tandem.json (every path in it is resolved inside the folder and
// must exist). Throws tandem::Error(kBundle) saying what is wrong and what to do.
Manifest ReadManifest(const std::string& folder);

// A key of tandem.json, as this reader treats it.
struct ManifestKey {
  const char* object;  // "bundle" (top level) or "graph" (each entry of "graphs")
  const char* name;
  bool read;           // false: informational, written by the exporter and not read here
};

// Every key of tandem.json this reader knows: it requires each key it reads.
const std::vector<ManifestKey>& ManifestKeys();

}  // namespace tandem
