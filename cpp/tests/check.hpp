// A minimal check harness shared by the C++ test programs: CHECK counts and reports failures
// without stopping, CheckThrows expects a tandem::Error, Summary prints the tally and gives the
// exit status.
#pragma once

#include <functional>
#include <iostream>
#include <string>

#include "tandem/tandem.hpp"

namespace tandem_test {

inline int g_failures = 0;
inline int g_checks = 0;

// Expects `fn` to throw tandem::Error with `code` and a message containing `needle`.
inline void CheckThrows(const std::function<void()>& fn, tandem::ErrorCode code, const std::string& needle) {
  ++g_checks;
  try {
    fn();
  } catch (const tandem::Error& e) {
    if (e.code() == code && std::string(e.what()).find(needle) != std::string::npos) return;
    ++g_failures;
    std::cerr << "wrong error: code " << static_cast<int>(e.code()) << " message: " << e.what()
              << " (wanted \"" << needle << "\")\n";
    return;
  }
  ++g_failures;
  std::cerr << "expected an error containing \"" << needle << "\"\n";
}

// Prints "N passed, M failed" and returns the process exit status.
inline int Summary() {
  std::cout << g_checks - g_failures << " passed, " << g_failures << " failed\n";
  return g_failures == 0 ? 0 : 1;
}

}  // namespace tandem_test

#define CHECK(cond)                                                              \
  do {                                                                           \
    ++tandem_test::g_checks;                                                     \
    if (!(cond)) {                                                               \
      ++tandem_test::g_failures;                                                 \
      std::cerr << __FILE__ << ":" << __LINE__ << ": CHECK failed: " #cond "\n"; \
    }                                                                            \
  } while (0)
