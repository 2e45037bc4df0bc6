#pragma once
// The library's ONNXATTN_* environment switches, read on every call (so that tests can flip them between calls).
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

}  // namespace onnxattn
