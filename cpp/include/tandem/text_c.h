/* tandem C text API: the bundle's tokenizer and generation from a text prompt, streaming the
 * text through a callback. Never throws; every call returns a status and tandem_last_error()
 * gives the message (see tandem_c.h). Text is UTF-8 with an explicit length; invalid UTF-8 is
 * TANDEM_ERR_INVALID_ARGUMENT. */
#ifndef TANDEM_TEXT_C_H_
#define TANDEM_TEXT_C_H_

#include "tandem/tandem_c.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tandem_tokenizer tandem_tokenizer; /* immutable: share it across threads */

/* Loads a tokenizer.json (TANDEM_ERR_BUNDLE if missing, malformed or unsupported; the message
 * names the unsupported component). */
tandem_status tandem_tokenizer_load(const char* path, tandem_tokenizer** out);
/* The tokenizer of a loaded bundle (TANDEM_ERR_BUNDLE if it ships none). */
tandem_status tandem_model_tokenizer(const tandem_model* model, tandem_tokenizer** out);
void tandem_tokenizer_free(tandem_tokenizer* tokenizer);

/* Token ids of text[0, len): writes min(capacity, count) ids to out and the count to *n_ids;
 * when *n_ids > capacity, call again with a larger buffer (out may be NULL if capacity is 0).
 * add_special_tokens: the tokenizer's BOS and such, as Hugging Face's encode does by default. */
tandem_status tandem_tokenizer_encode(const tandem_tokenizer* tokenizer, const char* text, size_t len,
                                      int add_special_tokens, int64_t* out, size_t capacity, size_t* n_ids);
/* Text of ids[0, n): writes it to out, NUL-terminated, when capacity > its length, and its
 * length (without the NUL) to *n_bytes; call again with capacity > *n_bytes otherwise. */
tandem_status tandem_tokenizer_decode(const tandem_tokenizer* tokenizer, const int64_t* ids, size_t n,
                                      int skip_special_tokens, char* out, size_t capacity, size_t* n_bytes);

/* Receives each new piece of generated text, piece[0, len) (UTF-8, not NUL-terminated), in
 * order: their concatenation is the generated text. Return 0 to go on, nonzero to end the
 * generation there (finish reason "cancelled"). */
typedef int (*tandem_text_callback)(const char* piece, size_t len, void* user_data);

typedef struct {
  const char* const* stop;  /* n_stop stop strings (NUL-terminated UTF-8); the text ends before the
                               first one found (finish reason "stop") */
  size_t n_stop;
  int add_special_tokens;   /* encode the prompt with the tokenizer's special tokens (default 1) */
  int skip_special_tokens;  /* special tokens (EOS...) do not show in the text (default 1) */
} tandem_text_params;

/* Defaults: no stop strings, special tokens added to the prompt and skipped in the text. */
tandem_text_params tandem_text_default_params(void);

typedef struct {
  const char* finish_reason; /* "eos" | "max_new_tokens" | "length" | "stop" | "cancelled" (static) */
  size_t prompt_tokens;
  size_t new_tokens;
} tandem_text_result;

/* Generates a completion of prompt[0, prompt_len) with the bundle's model, streaming the text
 * to on_text (may be NULL). params: as tandem_generator_create (NULL: defaults); text: NULL for
 * defaults; result: may be NULL. The same text as the Python API's generate for the same
 * prompt and options. */
tandem_status tandem_generate_text(const tandem_model* model, const tandem_tokenizer* tokenizer, const char* prompt,
                                   size_t prompt_len, const tandem_generate_params* params,
                                   const tandem_text_params* text, tandem_text_callback on_text, void* user_data,
                                   tandem_text_result* result);

#ifdef __cplusplus
}
#endif
#endif /* TANDEM_TEXT_C_H_ */
