// The bundle manifest (tandem.json), parsed and checked. Mirrors tandem/manifest.py.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace tandem::detail {

struct GraphSpec {
  std::string role;  // "large" | "small" | "draft"
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
  std::vector<int> memory_layers;    // small: M_L layer index of each memory input
  std::vector<std::string> memory;
  int memory_size = 0;
  std::string router_score;          // "" when the graph has no router
  bool kv_fp16 = false;              // KV buffers hold float16 (kv_dtype "float16"), else float32
  int kv_scratch_rows = 0;           // rows the graph writes past a call's rows (buffer room only)
  std::vector<int64_t> draft_vocab;  // drafters: token id of each logits column (ascending); empty: all
  int64_t logits_size() const { return draft_vocab.empty() ? vocab_size : static_cast<int64_t>(draft_vocab.size()); }
};

struct Manifest {
  std::string folder;  // canonical bundle folder
  GraphSpec large;
  std::optional<GraphSpec> small, draft;
  int64_t vocab_size = 0;
  int64_t context_length = 0;
  std::vector<int64_t> eos_token_ids;
  std::string tokenizer;  // absolute path or ""
  int default_block_length = 4;
  int max_block_length = 16;
  float router_threshold = 0.8f;
};

// Reads and validates <folder>/tandem.json. Throws tandem::Error(kBundle) with the reason.
Manifest LoadManifest(const std::string& folder);

}  // namespace tandem::detail
