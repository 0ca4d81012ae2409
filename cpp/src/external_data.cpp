// The external-data scanner (ExternalData: a bundle graph never reads a file outside its
// folder) and SharedWeights (tensors several graphs read from one data file, mapped once).
#include "external_data.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <tuple>

#include "tandem/tandem.hpp"

namespace tandem::detail {
namespace {

// ---- external data check ------------------------------------------------------------
// ONNX Runtime reads an initializer's external data from `location`, relative to the model
// file. A bundle must never make it read a file outside the bundle, whatever the ONNX
// Runtime version in use checks itself, so the .onnx protobuf is scanned before loading:
// every TensorProto (initializers, sparse initializers, Constant / attribute tensors, and
// those of subgraphs and functions) whose external_data `location` is absolute, contains
// "..", or resolves (symlinks included) outside the model's folder is refused, and so is one
// whose file is missing or whose `offset` / `length` reach past the end of that file. A
// location may name another graph's data file of the bundle: the exporter stores a tensor
// that several graphs use once. The scan reads only the protobuf wire format, so it needs no
// protobuf library.

// A top-level initializer whose bytes are in a data file.
struct ExternalTensor {
  std::string name;
  std::string path;  // the data file (resolved inside the model's folder)
  uint64_t offset = 0, length = 0;
  bool has_length = false;
  int64_t data_type = 0;
  std::vector<int64_t> dims;
};

// `text` with bytes outside printable ASCII replaced (it may come from a damaged file).
std::string Printable(const std::string& text) {
  std::string out = text.substr(0, 200);
  for (char& c : out)
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) c = '?';
  return out;
}

struct Scanner {
  const std::filesystem::path dir;  // canonical folder of the model file
  const std::string& file;
  std::vector<ExternalTensor>& initializers;         // out: the main graph's external initializers
  std::map<std::string, uint64_t> sizes = {};        // data file sizes, by location

  struct Field {
    uint64_t number = 0;
    int wire = 0;
    const uint8_t* data = nullptr;  // length-delimited payload
    uint64_t size = 0;
    uint64_t value = 0;             // varint
  };

  [[noreturn]] void Corrupt() const {
    throw Error(ErrorCode::kBundle, "cannot load " + file + " (not a valid ONNX protobuf); the file is truncated or corrupt: re-export the bundle");
  }

  static bool Varint(const uint8_t*& p, const uint8_t* end, uint64_t& v) {
    v = 0;
    for (int shift = 0; shift < 64 && p < end; shift += 7) {
      const uint8_t b = *p++;
      v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) return true;
    }
    return false;
  }

  // Calls fn(field) for each length-delimited field of the message [p, end), and
  // on_varint(field) for each varint field.
  template <typename F, typename V>
  void Fields(const uint8_t* p, const uint8_t* end, F&& fn, V&& on_varint) const {
    while (p < end) {
      Field f;
      uint64_t tag = 0;
      if (!Varint(p, end, tag)) Corrupt();
      f.number = tag >> 3;
      f.wire = static_cast<int>(tag & 7);
      switch (f.wire) {
        case 0:
          if (!Varint(p, end, f.value)) Corrupt();
          on_varint(f);
          break;
        case 1: if (end - p < 8) Corrupt(); p += 8; break;
        case 5: if (end - p < 4) Corrupt(); p += 4; break;
        case 2:
          if (!Varint(p, end, f.size) || f.size > static_cast<uint64_t>(end - p)) Corrupt();
          f.data = p;
          p += f.size;
          fn(f);
          break;
        default: Corrupt();  // groups are not used by ONNX
      }
    }
  }

  template <typename F>
  void Fields(const uint8_t* p, const uint8_t* end, F&& fn) const {
    Fields(p, end, std::forward<F>(fn), [](const Field&) {});
  }

  void CheckLocation(const std::string& location) const {
    namespace fs = std::filesystem;
    const fs::path rel(location);
    bool ok = !location.empty() && !rel.is_absolute();
    for (const auto& part : rel) ok = ok && part != "..";
    if (ok) {
      std::error_code ec;
      const fs::path full = fs::weakly_canonical(dir / rel, ec);
      auto [d_end, _] = std::mismatch(dir.begin(), dir.end(), full.begin(), full.end());
      ok = !ec && d_end == dir.end();
    }
    if (!ok)
      throw Error(ErrorCode::kBundle, file + " reads external data from \"" + Printable(location) +
                                          "\", outside the bundle folder; refused (external data files must "
                                          "lie next to the .onnx file: re-export the bundle)");
  }

  // The size of the data file `location` (checked to lie in the folder).
  uint64_t DataFileSize(const std::string& location) {
    auto it = sizes.find(location);
    if (it != sizes.end()) return it->second;
    namespace fs = std::filesystem;
    std::error_code ec;
    const fs::path full = dir / location;
    const bool regular = fs::is_regular_file(full, ec);
    const uint64_t size = regular && !ec ? static_cast<uint64_t>(fs::file_size(full, ec)) : 0;
    if (!regular || ec)
      throw Error(ErrorCode::kBundle, file + " reads external data from \"" + Printable(location) +
                                          "\", which is missing from the bundle folder; re-export the bundle");
    return sizes[location] = size;
  }

  uint64_t Number(const std::string& text, const char* key, const std::string& tensor) const {
    uint64_t v = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (text.empty() || ec != std::errc() || end != text.data() + text.size())
      throw Error(ErrorCode::kBundle, file + ": tensor \"" + Printable(tensor) + "\" has the external data " + key +
                                          " \"" + Printable(text) + "\", not a byte count; the file is corrupt: "
                                          "re-export the bundle");
    return v;
  }

  // TensorProto: dims 1, data_type 2, name 8, external_data 13, data_location 14.
  void Tensor(const Field& t, int depth, bool initializer) {
    ExternalTensor x;
    std::string location, offset, length;
    bool external = false, has_offset = false;
    uint64_t data_location = 0;
    Fields(
        t.data, t.data + t.size,
        [&](const Field& f) {
          if (f.number == 8) {
            x.name.assign(reinterpret_cast<const char*>(f.data), f.size);
          } else if (f.number == 1) {  // packed dims
            const uint8_t* p = f.data;
            uint64_t v = 0;
            while (p < f.data + f.size) {
              if (!Varint(p, f.data + f.size, v)) Corrupt();
              x.dims.push_back(static_cast<int64_t>(v));
            }
          } else if (f.number == 13) {  // StringStringEntryProto: key 1, value 2
            std::string key, value;
            Fields(f.data, f.data + f.size, [&](const Field& kv) {
              if (kv.number == 1) key.assign(reinterpret_cast<const char*>(kv.data), kv.size);
              if (kv.number == 2) value.assign(reinterpret_cast<const char*>(kv.data), kv.size);
            });
            if (key == "location") {
              CheckLocation(value);
              location = value;
              external = true;
            } else if (key == "offset") {
              offset = value;
              has_offset = true;
            } else if (key == "length") {
              length = value;
              x.has_length = true;
            }
          }
        },
        [&](const Field& f) {
          if (f.number == 1) x.dims.push_back(static_cast<int64_t>(f.value));
          else if (f.number == 2) x.data_type = static_cast<int64_t>(f.value);
          else if (f.number == 14) data_location = f.value;
        });
    if (!external) return;
    if (has_offset) x.offset = Number(offset, "offset", x.name);
    if (x.has_length) x.length = Number(length, "length", x.name);
    const uint64_t size = DataFileSize(location);
    if (x.offset > size || (x.has_length && x.length > size - x.offset))
      throw Error(ErrorCode::kBundle,
                  file + ": tensor \"" + Printable(x.name) + "\" reads bytes " + std::to_string(x.offset) + ".." +
                      std::to_string(x.offset + (x.has_length ? x.length : 0)) + " of \"" + Printable(location) +
                      "\", which has " + std::to_string(size) +
                      " bytes; the bundle is truncated or corrupt: re-export the bundle");
    if (initializer && depth == 1 && data_location == 1) {  // TensorProto.EXTERNAL
      x.path = (dir / location).string();
      initializers.push_back(std::move(x));
    }
  }

  void Sparse(const Field& s, int depth) {  // SparseTensorProto: values 1, indices 2
    Fields(s.data, s.data + s.size, [&](const Field& f) {
      if (f.number == 1 || f.number == 2) Tensor(f, depth + 1, false);
    });
  }

  void Node(const Field& n, int depth) {  // NodeProto.attribute 5
    Fields(n.data, n.data + n.size, [&](const Field& f) {
      if (f.number != 5) return;
      Fields(f.data, f.data + f.size, [&](const Field& a) {  // AttributeProto
        if (a.number == 5 || a.number == 10) Tensor(a, depth + 1, false);  // t, tensors
        else if (a.number == 6 || a.number == 11) Graph(a, depth + 1);     // g, graphs
        else if (a.number == 22 || a.number == 23) Sparse(a, depth + 1);  // sparse_tensor(s)
      });
    });
  }

  void Graph(const Field& g, int depth) {  // GraphProto
    if (depth > 64) Corrupt();
    Fields(g.data, g.data + g.size, [&](const Field& f) {
      if (f.number == 1) Node(f, depth + 1);                          // node
      else if (f.number == 5) Tensor(f, depth + 1, depth == 0);       // initializer (of the main graph: depth 0)
      else if (f.number == 15) Sparse(f, depth + 1);                  // sparse_initializer
    });
  }

  void Model(const uint8_t* p, const uint8_t* end) {  // ModelProto
    Fields(p, end, [&](const Field& f) {
      if (f.number == 7) Graph(f, 0);  // graph
      else if (f.number == 25)         // functions: FunctionProto.node 7
        Fields(f.data, f.data + f.size, [&](const Field& n) { if (n.number == 7) Node(n, 1); });
      else if (f.number == 20)         // training_info: initialization 1, algorithm 2
        Fields(f.data, f.data + f.size, [&](const Field& g) { if (g.number == 1 || g.number == 2) Graph(g, 1); });
    });
  }
};

// Checks the external data of the model `file` (see Scanner); returns the main graph's
// initializers stored in data files.
std::vector<ExternalTensor> ScanExternalData(const std::string& file) {
  namespace fs = std::filesystem;
  std::vector<ExternalTensor> initializers;
  std::error_code ec;
  const fs::path dir = fs::canonical(fs::path(file).parent_path(), ec);
  if (ec) throw Error(ErrorCode::kBundle, "cannot open the folder of " + file + ": " + ec.message());
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(ErrorCode::kBundle, "cannot open " + file + ": " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || st.st_size == 0) {
    ::close(fd);
    return initializers;  // empty or unreadable: ONNX Runtime reports it as corrupt
  }
  void* map = ::mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) throw Error(ErrorCode::kBundle, "cannot read " + file + ": " + std::strerror(errno));
  const auto* p = static_cast<const uint8_t*>(map);
  try {
    Scanner{dir, file, initializers}.Model(p, p + st.st_size);
  } catch (...) {
    ::munmap(map, static_cast<size_t>(st.st_size));
    throw;
  }
  ::munmap(map, static_cast<size_t>(st.st_size));
  return initializers;
}

// Bytes of one element of an ONNX TensorProto.DataType; 0 for types not shared (strings, ...).
uint64_t ElementSize(int64_t type) {
  switch (type) {
    case 2: case 3: case 9: return 1;              // uint8, int8, bool
    case 4: case 5: case 10: case 16: return 2;    // uint16, int16, float16, bfloat16
    case 1: case 6: case 12: return 4;             // float, int32, uint32
    case 7: case 11: case 13: return 8;            // int64, double, uint64
    default: return 0;
  }
}

}  // namespace


void CheckExternalData(const std::string& file) { (void)ScanExternalData(file); }

// ---- shared weights -----------------------------------------------------------------

void SharedWeights::ContainerDeleter::operator()(OrtPrepackedWeightsContainer* c) const noexcept {
  Ort::GetApi().ReleasePrepackedWeightsContainer(c);
}

SharedWeights::SharedWeights(const std::vector<std::string>& graph_files) {
  struct Key {
    std::string path;
    uint64_t offset, length;
    int64_t type;
    std::vector<int64_t> dims;
    auto operator<=>(const Key&) const = default;
  };
  std::map<Key, std::vector<std::pair<std::string, std::string>>> readers;  // -> (graph file, initializer)
  for (const std::string& file : graph_files) {
    for (ExternalTensor& t : ScanExternalData(file)) {
      uint64_t count = 1, element = ElementSize(t.data_type);
      bool ok = element > 0 && !t.name.empty();
      for (int64_t d : t.dims) {
        ok = ok && d >= 0 && (d == 0 || count <= (uint64_t{1} << 62) / static_cast<uint64_t>(d));
        if (ok) count *= static_cast<uint64_t>(d);
      }
      if (!ok || count == 0 || count > (uint64_t{1} << 62) / element) continue;
      if (t.has_length && t.length != count * element) continue;  // ONNX Runtime will refuse it
      readers[Key{t.path, t.offset, count * element, t.data_type, t.dims}].emplace_back(file, t.name);
    }
  }
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  std::map<std::tuple<std::string, uint64_t, uint64_t>, size_t> mapped;  // (file, offset, length) -> maps_ index
  try {
    const Ort::MemoryInfo memory = Ort::MemoryInfo::CreateCpu(OrtDeviceAllocator, OrtMemTypeDefault);
    for (const auto& [key, users] : readers) {
      std::set<std::string> graphs;
      for (const auto& user : users) graphs.insert(user.first);
      if (graphs.size() < 2 || key.offset % page != 0) continue;
      const uint64_t size = std::filesystem::file_size(key.path);
      if (key.length > size || key.offset > size - key.length) continue;  // the scan refuses it
      auto [at, fresh] = mapped.try_emplace({key.path, key.offset, key.length}, maps_.size());
      if (fresh) {  // bytes seen with several shapes (the head's scales) are mapped once
        const int fd = ::open(key.path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) throw Error(ErrorCode::kBundle, "cannot open " + key.path + ": " + std::strerror(errno));
        void* address = ::mmap(nullptr, key.length, PROT_READ, MAP_PRIVATE, fd, static_cast<off_t>(key.offset));
        ::close(fd);
        if (address == MAP_FAILED)
          throw Error(ErrorCode::kBundle, "cannot map " + key.path + ": " + std::strerror(errno));
        maps_.push_back(std::make_unique<Mapping>(address, key.length));
      }
      const size_t m = at->second;
      values_.push_back(Ort::Value::CreateTensor(memory, maps_[m]->address, key.length, key.dims.data(),
                                                 key.dims.size(), static_cast<ONNXTensorElementDataType>(key.type)));
      value_map_.push_back(m);
      for (const auto& [file, name] : users) uses_[file].emplace_back(name, values_.size() - 1);
    }
    if (!values_.empty()) {
      OrtPrepackedWeightsContainer* container = nullptr;
      Ort::ThrowOnError(Ort::GetApi().CreatePrepackedWeightsContainer(&container));
      container_.reset(container);
    }
  } catch (const Ort::Exception& e) {
    throw Error(ErrorCode::kRuntime, std::string("ONNX Runtime cannot share the weights of the bundle's graphs: ") +
                                         e.what());
  } catch (const std::filesystem::filesystem_error& e) {
    throw Error(ErrorCode::kBundle, std::string("cannot read a data file of the bundle: ") + e.what());
  }
}

SharedWeights::~SharedWeights() = default;

SharedWeights::Mapping::~Mapping() {
  if (address) ::munmap(address, size);
}

size_t SharedWeights::AddTo(const std::string& graph_file, Ort::SessionOptions& options) const {
  auto it = uses_.find(graph_file);
  if (it == uses_.end()) return 0;
  for (const auto& [name, value] : it->second) options.AddInitializer(name.c_str(), values_[value]);
  return it->second.size();
}

void SharedWeights::Loaded(const std::string& graph_file) {
  auto it = uses_.find(graph_file);
  if (it == uses_.end()) return;
  std::set<size_t> maps;
  for (const auto& use : it->second) maps.insert(value_map_[use.second]);
  for (size_t m : maps) ++maps_[m]->sessions;
}

uint64_t SharedWeights::bytes() const {
  uint64_t total = 0;
  for (const auto& m : maps_)
    if (m->sessions >= 2) total += m->size;
  return total;
}

void SharedWeights::ReleasePages() const noexcept {
  for (const auto& m : maps_) ::madvise(m->address, m->size, MADV_DONTNEED);
}

}  // namespace tandem::detail
