// One Model shared by several threads, each with its own Generator, gives exactly the
// outputs of running the same requests one after another; a Generator used from two
// threads at once is refused with kBusy and its output is not corrupted.
//
// Needs a bundle: TANDEM_TEST_BUNDLE=<folder> (tests/test_concurrency.py runs it on the
// test bundle). Without it the test is skipped (exit code 77, ctest's SKIP_RETURN_CODE).
#include <atomic>
#include <barrier>
#include <cstdlib>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "tandem/tandem.hpp"

namespace {

struct Request {
  std::vector<int64_t> prompt;
  tandem::GenerateOptions options;
};

std::vector<Request> Requests(const tandem::Model& model) {
  std::vector<Request> out;
  const std::vector<std::vector<int64_t>> prompts = {{1, 2, 3, 4}, {17}, {5, 80, 81, 82, 83, 84, 85, 86}};
  std::vector<tandem::Mode> modes = {tandem::Mode::kLarge};
  if (model.has_tandem_drafter()) modes.insert(modes.end(), {tandem::Mode::kTandem, tandem::Mode::kSpeed});
  if (model.has_plain_drafter()) modes.push_back(tandem::Mode::kVanilla);
  for (const auto& prompt : prompts)
    for (tandem::Mode mode : modes)
      for (bool sample : {false, true}) {
        Request r;
        r.prompt = prompt;
        r.options.mode = mode;
        r.options.block_length = 3;
        r.options.max_new_tokens = 20;
        r.options.ignore_eos = true;
        r.options.do_sample = sample;
        r.options.temperature = 0.9f;
        r.options.top_k = 20;
        r.options.seed = 1234 + out.size();
        out.push_back(r);
      }
  return out;
}

std::vector<int64_t> Generate(const std::shared_ptr<const tandem::Model>& model, const Request& r) {
  tandem::Generator gen(model, r.prompt, r.options);
  return gen.Run();
}

}  // namespace

int main() {
  const char* bundle = std::getenv("TANDEM_TEST_BUNDLE");
  if (!bundle || !*bundle) {
    std::cout << "SKIPPED: set TANDEM_TEST_BUNDLE to a bundle folder to run the concurrency test\n";
    return 77;
  }
  int failures = 0;
  try {
    tandem::ModelOptions mo;
    mo.bundle_path = bundle;
    mo.intra_op_threads = 1;
    auto model = tandem::Model::Load(mo);
    const auto requests = Requests(*model);

    // 1. one after another
    std::vector<std::vector<int64_t>> expected;
    for (const auto& r : requests) expected.push_back(Generate(model, r));

    // 2. the same requests from 4 threads at once, each in its own order, twice
    constexpr int kThreads = 4;
    std::atomic<int> mismatches{0}, errors{0};
    std::barrier start(kThreads);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        start.arrive_and_wait();
        for (int round = 0; round < 2; ++round)
          for (size_t k = 0; k < requests.size(); ++k) {
            const size_t n = requests.size(), r = (k + 5 * t) % n;
            const size_t i = t % 2 ? n - 1 - r : r;  // a different order per thread
            try {
              if (Generate(model, requests[i]) != expected[i]) ++mismatches;
            } catch (const std::exception& e) {
              std::cerr << "thread " << t << ": " << e.what() << "\n";
              ++errors;
            }
          }
      });
    }
    for (auto& th : threads) th.join();
    std::cout << requests.size() * kThreads * 2 << " concurrent generations, " << mismatches << " mismatches, "
              << errors << " errors\n";
    failures += mismatches + errors;

    // 3. one Generator driven by two threads: calls overlap and are refused, never corrupted
    Request longest = requests[0];
    longest.options.max_new_tokens = 1 << 20;  // runs to the context limit
    const std::vector<int64_t> reference = Generate(model, longest);
    int busy_total = 0;
    for (int attempt = 0; attempt < 200 && busy_total == 0; ++attempt) {
      tandem::Generator gen(model, longest.prompt, longest.options);
      std::atomic<int> busy{0}, other{0};
      std::atomic<size_t> emitted{0};
      std::barrier both(2);
      auto drive = [&] {
        both.arrive_and_wait();
        for (;;) {
          try {
            auto tokens = gen.Step();
            if (tokens.empty()) return;
            emitted += tokens.size();
          } catch (const tandem::Error& e) {
            if (e.code() == tandem::ErrorCode::kBusy) ++busy;
            else ++other;
          }
        }
      };
      std::thread a(drive), b(drive);
      a.join();
      b.join();
      if (other || gen.tokens() != reference || emitted != reference.size()) {
        std::cerr << "shared generator: output corrupted or unexpected error\n";
        ++failures;
        break;
      }
      busy_total += busy;
    }
    std::cout << "shared generator: " << busy_total << " concurrent calls refused with kBusy\n";
    if (busy_total == 0) {
      std::cerr << "two threads never overlapped in 200 generations\n";
      ++failures;
    }
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  std::cout << (failures ? "FAILED" : "OK") << "\n";
  return failures ? 1 : 0;
}
