// tandem_generate_params <-> tandem::GenerateOptions (the C API's options; unit-tested).
#pragma once

#include "tandem/tandem.hpp"
#include "tandem/tandem_c.h"

namespace tandem::detail {

// The defaults of GenerateOptions as the C struct, struct_size = sizeof(tandem_generate_params).
tandem_generate_params DefaultCParams();

// The first params->struct_size bytes of `params` over the defaults, as GenerateOptions (NULL:
// the defaults). Throws kInvalidArgument for a struct_size this library cannot read.
GenerateOptions OptionsFromC(const tandem_generate_params* params);

}  // namespace tandem::detail
