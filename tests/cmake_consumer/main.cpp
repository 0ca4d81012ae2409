// Generates with the C API from an installed tandem: consumer BUNDLE ID [ID...]
#include <tandem/tandem_c.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

int main(int argc, char** argv) {
  if (argc < 3) return 2;
  tandem_model* model = nullptr;
  if (tandem_model_load(argv[1], 1, nullptr, &model) != TANDEM_OK) {
    std::fprintf(stderr, "load failed: %s\n", tandem_last_error());
    return 1;
  }
  std::vector<int64_t> prompt;
  for (int i = 2; i < argc; ++i) prompt.push_back(std::atoll(argv[i]));
  tandem_generate_params params = tandem_generate_default_params();
  params.mode = "speed";
  params.max_new_tokens = 12;
  tandem_generator* gen = nullptr;
  if (tandem_generator_create(model, prompt.data(), prompt.size(), &params, &gen) != TANDEM_OK) {
    std::fprintf(stderr, "create failed: %s\n", tandem_last_error());
    tandem_model_free(model);
    return 1;
  }
  int64_t buf[3];  // smaller than a round: exercises the carry-over of pending tokens
  int done = 0;
  while (!done) {
    size_t n = 0;
    if (tandem_generator_step(gen, buf, 3, &n, &done) != TANDEM_OK) {
      std::fprintf(stderr, "step failed: %s\n", tandem_last_error());
      break;
    }
    for (size_t i = 0; i < n; ++i) std::printf("%lld ", static_cast<long long>(buf[i]));
  }
  std::printf("\n%s\n", tandem_generator_finish_reason(gen));
  tandem_generator_free(gen);
  tandem_model_free(model);
  return 0;
}
