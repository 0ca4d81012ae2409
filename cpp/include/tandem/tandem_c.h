/* tandem C API: for apps in C or other languages. Never throws; every call returns a
 * status, and tandem_last_error() gives the message of the calling thread's last failure.
 * Ranges are half-open. Handles are opaque; free them with their *_free function. */
#ifndef TANDEM_C_H_
#define TANDEM_C_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  TANDEM_OK = 0,
  TANDEM_ERR_INVALID_ARGUMENT = 1,
  TANDEM_ERR_BUNDLE = 2,
  TANDEM_ERR_UNAVAILABLE = 3,
  TANDEM_ERR_BUSY = 4,
  TANDEM_ERR_RUNTIME = 5,
  TANDEM_ERR_DEVICE_UNAVAILABLE = 6,
  TANDEM_ERR_INTERNAL = 99
} tandem_status;

typedef struct tandem_model tandem_model;         /* shareable across threads */
typedef struct tandem_generator tandem_generator; /* one thread at a time */

/* The options of one request: the fields of tandem::GenerateOptions (tandem.hpp documents
 * them), under the same names. Initialise with tandem_generate_params_init, then set fields. */
typedef struct {
  size_t struct_size;        /* sizeof(tandem_generate_params) as the app was built (set by
                                tandem_generate_params_init): a later library that adds fields
                                gives them their defaults */
  const char* mode;          /* "large" | "tandem" | "speed" | "vanilla"; NULL: "large" */
  int block_length;          /* γ; 0: the bundle's default */
  int adaptive;              /* nonzero: the router ends each draft early (speed, vanilla) */
  float router_threshold;    /* τ; < 0: the bundle's default */
  int min_block_length;      /* adaptive: draft at least this many (>= 0) */
  int max_block_length;      /* adaptive: draft at most this many; 0: speed: the tandem drafter's
                                trained γ when the bundle records it, else the bundle's maximum */
  int max_new_tokens;        /* >= 0 */
  int do_sample;             /* 0: greedy */
  float temperature;         /* > 0, used when do_sample */
  int top_k;                 /* 0: off */
  float top_p;               /* (0, 1] */
  uint64_t seed;             /* sampling RNG seed */
  const int64_t* eos_token_ids;  /* n_eos_token_ids ids that end generation (copied at create);
                                    NULL / 0: the bundle's EOS ids */
  size_t n_eos_token_ids;
  int ignore_eos;            /* nonzero: never stop at EOS */
  float draft_cost;          /* adaptive: c in M_L steps; < 0: measured on this machine */
  float verify_cost;         /* adaptive: β in M_L steps; < 0: measured on this machine */
} tandem_generate_params;

/* Sets *params to the defaults (mode "large", the bundle's γ and τ, greedy, 128 new tokens)
 * and params->struct_size = struct_size; pass sizeof(tandem_generate_params). */
tandem_status tandem_generate_params_init(tandem_generate_params* params, size_t struct_size);

/* Loads a bundle folder. threads: intra-op threads, in [0, tandem_max_threads()] (0: one per
 * core; more is TANDEM_ERR_INVALID_ARGUMENT, refused before any thread starts). ort_library:
 * path to libonnxruntime.so, or NULL to search ($TANDEM_ORT_LIBRARY, build default, dlopen). */
tandem_status tandem_model_load(const char* bundle_path, int threads, const char* ort_library,
                                tandem_model** out);
/* The most threads tandem_model_load accepts on this machine (4 per hardware thread, >= 64). */
int tandem_max_threads(void);
void tandem_model_free(tandem_model* model);
int64_t tandem_model_vocab_size(const tandem_model* model);
/* The drafting and verifying costs of `mode`'s drafter ("speed"/"tandem" or "vanilla"), in M_L
 * steps, measured on first use (tandem::Model::decode_costs): adaptive requests that leave
 * draft_cost / verify_cost < 0 use them. */
tandem_status tandem_model_decode_costs(const tandem_model* model, const char* mode, double* draft_cost,
                                        double* verify_cost);

/* Checks params (NULL: the defaults) and runs the prefill over prompt[0, n_prompt). */
tandem_status tandem_generator_create(const tandem_model* model, const int64_t* prompt, size_t n_prompt,
                                      const tandem_generate_params* params, tandem_generator** out);
void tandem_generator_free(tandem_generator* gen);
/* One round. Writes up to `capacity` new tokens into out[0, *n_out); tokens that do not fit
 * come with the next call. *done = 1 once every token has been returned. */
tandem_status tandem_generator_step(tandem_generator* gen, int64_t* out, size_t capacity, size_t* n_out,
                                    int* done);
/* "eos" | "max_new_tokens" | "length" | "" (not finished). */
const char* tandem_generator_finish_reason(const tandem_generator* gen);

/* Message of the calling thread's last failed call ("" if none). Valid until the next call. */
const char* tandem_last_error(void);

#ifdef __cplusplus
}
#endif
#endif /* TANDEM_C_H_ */
