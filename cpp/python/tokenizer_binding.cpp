// tandem._core.Tokenizer and Detokenizer: the C++ tokenizer and incremental detokenizer with
// stop strings (include/tandem/text.hpp) for Python. The GIL is released while they run.
#include <pybind11/stl.h>

#include "bindings.hpp"
#include "tandem/text.hpp"

namespace py = pybind11;

namespace tandem::python {
namespace {

// UTF-8 bytes of a str (refusing lone surrogates with a typed error) or of bytes (checked by
// the tokenizer). The view lives as long as `text`.
std::string_view Utf8Of(const py::handle& text) {
  if (PyUnicode_Check(text.ptr())) {
    Py_ssize_t size = 0;
    const char* data = PyUnicode_AsUTF8AndSize(text.ptr(), &size);
    if (!data) {
      PyErr_Clear();
      throw Error(ErrorCode::kInvalidArgument,
                  "the text is not valid Unicode (it holds a lone surrogate, which UTF-8 cannot encode); "
                  "remove it or decode the source with errors=\"replace\"");
    }
    return {data, static_cast<size_t>(size)};
  }
  if (PyBytes_Check(text.ptr())) return {PyBytes_AS_STRING(text.ptr()), static_cast<size_t>(PyBytes_GET_SIZE(text.ptr()))};
  throw py::type_error("text must be str or UTF-8 bytes, got " + std::string(py::str(py::type::of(text).attr("__name__"))));
}

}  // namespace

void BindTokenizer(py::module_& m) {
  py::class_<Tokenizer, std::shared_ptr<Tokenizer>>(m, "Tokenizer",
                                                    "A Hugging Face tokenizer.json run by the C++ core")
      .def(py::init([](const std::string& path) {
             py::gil_scoped_release release;
             return std::const_pointer_cast<Tokenizer>(Tokenizer::Load(path));
           }),
           py::arg("path"))
      .def_static(
          "from_json",
          [](const std::string& json, const std::string& source) {
            py::gil_scoped_release release;
            return std::const_pointer_cast<Tokenizer>(Tokenizer::FromJson(json, source));
          },
          py::arg("json"), py::arg("source") = "tokenizer.json")
      .def(
          "encode",
          [](const Tokenizer& self, const py::object& text, bool add_special_tokens) {
            const std::string_view utf8 = Utf8Of(text);
            std::vector<int64_t> ids;
            {
              py::gil_scoped_release release;
              ids = self.Encode(utf8, add_special_tokens);
            }
            return ids;
          },
          py::arg("text"), py::arg("add_special_tokens") = true)
      .def(
          "decode",
          [](const Tokenizer& self, const std::vector<int64_t>& ids, bool skip_special_tokens) {
            std::string text;
            {
              py::gil_scoped_release release;
              text = self.Decode(ids, skip_special_tokens);
            }
            return text;
          },
          py::arg("ids"), py::arg("skip_special_tokens") = true)
      .def_property_readonly("vocab_size", &Tokenizer::vocab_size)
      .def_property_readonly("source", &Tokenizer::source)
      .def("token_to_id", [](const Tokenizer& self, const std::string& token) { return self.TokenToId(token); },
           py::arg("token"))
      .def("id_to_token", &Tokenizer::IdToToken, py::arg("id"))
      .def("is_special", &Tokenizer::IsSpecial, py::arg("id"));

  py::class_<Detokenizer>(m, "Detokenizer",
                          "Incremental, UTF-8-safe text of generated ids, with stop strings")
      .def(py::init([](std::shared_ptr<Tokenizer> tokenizer, std::vector<std::string> stop, bool skip_special_tokens) {
             return std::make_unique<Detokenizer>(std::move(tokenizer), std::move(stop), skip_special_tokens);
           }),
           py::arg("tokenizer").none(true), py::arg("stop") = std::vector<std::string>{},
           py::arg("skip_special_tokens") = true)
      .def(
          "push",
          [](Detokenizer& self, const std::vector<int64_t>& ids) {
            std::string piece;
            {
              py::gil_scoped_release release;
              piece = self.Push(ids);
            }
            return piece;
          },
          py::arg("ids"), "Add generated ids; returns the text they release")
      .def("finish", &Detokenizer::Finish, py::call_guard<py::gil_scoped_release>(),
           "At the end of generation: the rest of the text")
      .def_property_readonly("stopped", &Detokenizer::stopped)
      .def_property_readonly("text", &Detokenizer::text)
      .def_property_readonly("ids", &Detokenizer::ids);
}

}  // namespace tandem::python
