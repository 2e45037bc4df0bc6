#pragma once
// The library's ONNXATTN_* environment switches, read on every call (so that tests can flip them between calls).
#include <cerrno>
#include <cstdlib>
#include <initializer_list>
#include <string>

#include "common/errors.h"

namespace onnxattn {

// Which of `choices` environment variable `name` holds (its index): unset or empty is the first; any other value
// is an InputError naming `op`: "<op>: environment variable <name> must be a, b or c, got 'x'".
inline int env_choice(const char* op, const char* name, std::initializer_list<const char*> choices) {
  const char* raw = std::getenv(name);
  const std::string value = raw == nullptr ? "" : raw;
  if (value.empty()) return 0;
  int index = 0;
  std::string listed;
  for (const char* choice : choices) {
    if (value == choice) return index;
    listed += (index == 0 ? "" : index + 1 == int(choices.size()) ? " or " : ", ") + std::string(choice);
    ++index;
  }
  fail(op, ": environment variable ", name, " must be ", listed, ", got '", value, "'");
}

// The integer environment variable `name` holds, in [lo, hi]; unset or empty is `fallback`. Any other value is an
// InputError naming `op`: "<op>: environment variable <name> must be an integer in [lo, hi], got 'x'".
inline long long env_integer(const char* op, const char* name, long long lo, long long hi, long long fallback) {
  const char* raw = std::getenv(name);
  if (raw == nullptr || *raw == '\0') return fallback;
  char* end = nullptr;
  errno = 0;
  const long long n = std::strtoll(raw, &end, 10);
  if (end == raw || *end != '\0' || errno == ERANGE || n < lo || n > hi) {
    fail(op, ": environment variable ", name, " must be an integer in [", lo, ", ", hi, "], got '", raw, "'");
  }
  return n;
}

}  // namespace onnxattn
