// Binding functions of tandem._core defined outside module.cpp.
#pragma once

#include <pybind11/pybind11.h>

namespace tandem::python {

// tandem._core.Tokenizer (tokenizer_binding.cpp).
void BindTokenizer(pybind11::module_& m);

}  // namespace tandem::python
