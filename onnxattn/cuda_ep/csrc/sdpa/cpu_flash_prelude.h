#pragma once
// Everything cpu_flash.inc uses, included before an ISA target region opens, so that these (inline)
// definitions are compiled for the baseline ISA and can be shared safely between translation units.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include "common/half.h"
#include "sdpa/cpu_flash_isa.h"
