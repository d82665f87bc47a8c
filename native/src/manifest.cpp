/*!
 * \file manifest.cpp
 * \brief Reading and checking the build manifest.
 */
#include "manifest.h"

#include "errors.h"
#include "json.h"
#include "digest.h"

#include <elf.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace dlrm {
namespace {

/*! \brief Parse one {"name","shape","dtype"} entry. */
TensorSpec ParseTensorSpec(const json::Value& v, const std::string& where) {
  TensorSpec t;
  t.name = v.At("name", where).AsString(where + ".name");
  t.shape = v.At("shape", where).AsIntList(where + ".shape");
  t.dtype = ParseDType(v.At("dtype", where).AsString(where + ".dtype"), where + ".dtype");
  for (int64_t d : t.shape) Require(d > 0, where + ": shape " + ShapeStr(t.shape) + " has a non-positive dimension");
  return t;
}

/*! \brief Parse one params entry and check bytes = prod(shape) * itemsize. */
ParamSpec ParseParamSpec(const json::Value& v, const std::string& where) {
  ParamSpec p;
  TensorSpec t = ParseTensorSpec(v, where);
  p.name = t.name;
  p.shape = t.shape;
  p.dtype = t.dtype;
  p.file = v.At("file", where).AsString(where + ".file");
  Require(!p.file.empty() && p.file.find('/') == std::string::npos && p.file != "." && p.file != "..",
          where + ": file '" + p.file + "' must be a plain file name");
  p.bytes = v.At("bytes", where).AsInt(where + ".bytes");
  p.sha256 = v.At("sha256", where).AsString(where + ".sha256");
  int64_t expect = NumElements(p.shape) * static_cast<int64_t>(p.dtype.bytes);
  Require(p.bytes == expect, where + ": bytes is " + std::to_string(p.bytes) + " but shape " +
                                 ShapeStr(p.shape) + " of " + p.dtype.name + " needs " +
                                 std::to_string(expect));
  return p;
}

/*! \brief String member or "" when absent/null. */
std::string OptString(const json::Value& obj, const std::string& key, const std::string& where) {
  if (!obj.Has(key)) return "";
  const json::Value v = obj.At(key, where);
  if (v.IsNull()) return "";
  return v.AsString(where + "." + key);
}

/*! \brief Check the embedding section against the inputs. */
void CheckEmbedding(const Manifest& m, const std::string& where) {
  const TensorSpec& dense = m.inputs[m.InputIndex(m.dense_input)];
  const TensorSpec& idx = m.inputs[m.InputIndex(m.indices_input)];
  const TensorSpec& off = m.inputs[m.InputIndex(m.offsets_input)];
  const int64_t B = m.batch_size, T = static_cast<int64_t>(m.tables.size());
  Require(T > 0, where + ": embedding.tables is empty");
  for (size_t t = 0; t < m.tables.size(); ++t) {
    Require(m.tables[t] > 0, where + ": embedding.tables[" + std::to_string(t) + "] is not positive");
  }
  Require(dense.shape.size() == 2 && dense.shape[0] == B && dense.dtype.name == "float32",
          where + ": dense input '" + dense.name + "' must be float32 [" + std::to_string(B) +
              ", F], got " + dense.dtype.name + " " + ShapeStr(dense.shape));
  const int64_t K = m.ids_per_bag;
  Require(K >= 1, where + ": embedding.ids_per_bag must be at least 1, got " + std::to_string(K));
  Require(off.shape == std::vector<int64_t>{T, B} && off.dtype.name == "int64",
          where + ": input '" + off.name + "' must be int64 " + ShapeStr({T, B}) + ", got " + off.dtype.name +
              " " + ShapeStr(off.shape));
  Require(idx.shape == std::vector<int64_t>{T, B * K} && idx.dtype.name == "int64",
          where + ": input '" + idx.name + "' must be int64 " + ShapeStr({T, B * K}) + " (" + std::to_string(K) +
              " ids per bag), got " + idx.dtype.name + " " + ShapeStr(idx.shape));
  // The runner feeds ids_per_bag ids per bag (offsets 0, K, 2K, ...); the fast path takes one.
  Require(m.bags.empty() || m.bags == "one_per_bag" || m.bags == "any",
          where + ": embedding.bags '" + m.bags + "' is not supported (expected one_per_bag or any)");
  Require(K == 1 || m.bags == "any",
          where + ": embedding.bags '" + m.bags + "' takes one id per bag, but ids_per_bag is " + std::to_string(K));
  Require(m.inputs.size() == 3, where + ": expected 3 inputs (dense, offsets, indices), got " +
                                    std::to_string(m.inputs.size()));
  Require(m.outputs.size() == 1 && m.outputs[0].dtype.name == "float32" &&
              NumElements(m.outputs[0].shape) == B && m.outputs[0].shape[0] == B,
          where + ": expected one float32 output of " + std::to_string(B) + " values per batch");
}

}  // namespace

DType ParseDType(const std::string& name, const std::string& where) {
  struct Row { const char* name; uint8_t code; uint8_t bits; };
  static const Row kRows[] = {
      {"float32", kDLFloat, 32}, {"float64", kDLFloat, 64}, {"float16", kDLFloat, 16},
      {"bfloat16", kDLBfloat, 16}, {"int8", kDLInt, 8},     {"int16", kDLInt, 16},
      {"int32", kDLInt, 32},     {"int64", kDLInt, 64},     {"uint8", kDLUInt, 8},
      {"uint16", kDLUInt, 16},   {"uint32", kDLUInt, 32},   {"uint64", kDLUInt, 64},
      {"bool", kDLBool, 8}};
  for (const Row& r : kRows) {
    if (name == r.name) return DType{name, DLDataType{r.code, r.bits, 1}, r.bits / 8u};
  }
  throw Error(where + ": unsupported dtype '" + name + "'");
}

int64_t NumElements(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string ShapeStr(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

size_t Manifest::InputIndex(const std::string& name) const {
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (inputs[i].name == name) return i;
  }
  throw Error(path + ": embedding names input '" + name + "' but inputs has no such entry");
}

namespace {

/*!
 * \brief Check the manifest's own hash: the build writes the JSON text, then appends
 *        `"manifest_sha256": "<hex>"` as the last member, the SHA-256 of the text without
 *        that member (docs/formats.md). Any edit after the build breaks it.
 */
void CheckSeal(const std::string& text, const std::string& path) {
  static const std::string kHead = ",\n  \"manifest_sha256\": \"", kTail = "\"\n}\n";
  const size_t n = kHead.size() + 64 + kTail.size();
  const bool sealed = text.size() > n && text.compare(text.size() - n, kHead.size(), kHead) == 0 &&
                      text.compare(text.size() - kTail.size(), kTail.size(), kTail) == 0;
  Require(sealed, path + ": has no manifest_sha256 as its last member: not written by `dlrm build`, or "
                         "edited after it; rebuild it");
  const std::string recorded = text.substr(text.size() - kTail.size() - 64, 64);
  const std::string actual = Sha256Bytes(text.substr(0, text.size() - n) + "\n}\n");
  Require(actual == recorded, path + ": edited after the build (its content no longer matches its "
                                     "manifest_sha256); restore it or rebuild with `dlrm build`");
}

/*! \brief Index of each table's parameter; its first dimension must be the table's row count. */
void CheckTableParams(Manifest* m, const std::vector<std::string>& names, const std::string& where) {
  Require(names.size() == m->tables.size(), where + ": embedding.table_params lists " +
                                                std::to_string(names.size()) + " parameters for " +
                                                std::to_string(m->tables.size()) + " tables");
  for (size_t t = 0; t < names.size(); ++t) {
    size_t i = 0;
    while (i < m->params.size() && m->params[i].name != names[t]) ++i;
    Require(i < m->params.size(), where + ": embedding.table_params[" + std::to_string(t) + "] names '" +
                                      names[t] + "', which is not in params");
    const ParamSpec& p = m->params[i];
    // p.bytes = rows x dim x itemsize was checked above and is checked against the file's size
    // when the weights are mapped: the row count comes from the weight file, not the manifest alone.
    Require(p.shape.size() == 2 && p.shape[0] == m->tables[t],
            where + ": embedding.tables[" + std::to_string(t) + "] is " + std::to_string(m->tables[t]) +
                " rows, but its table '" + p.name + "' (" + p.file + ", " + std::to_string(p.bytes) +
                " bytes) is " + p.dtype.name + " " + ShapeStr(p.shape));
    m->table_params.push_back(i);
  }
}

}  // namespace

Manifest LoadManifest(const std::string& path) {
  const std::string text = json::ReadFile(path);
  json::Value root = json::Parse(text, path);
  Manifest m;
  m.path = path;
  const std::string& fmt = root.At("format", path).AsString(path + ": format");
  Require(fmt == "dlrm-manifest", path + ": format is '" + fmt + "', expected 'dlrm-manifest'");
  int64_t ver = root.At("format_version", path).AsInt(path + ": format_version");
  Require(ver == kManifestVersion, path + ": format_version " + std::to_string(ver) +
                                       " is not supported (expected " + std::to_string(kManifestVersion) +
                                       "); rebuild it with `dlrm build`");
  CheckSeal(text, path);
  const json::Value& lib = root.At("library", path);
  m.library_file = lib.At("file", path + ": library").AsString(path + ": library.file");
  m.library_sha256 = lib.At("sha256", path + ": library").AsString(path + ": library.sha256");
  m.entry = root.At("entry", path).AsString(path + ": entry");
  m.batch_size = root.At("batch_size", path).AsInt(path + ": batch_size");
  Require(m.batch_size > 0, path + ": batch_size must be positive");
  const auto& ins = root.At("inputs", path).AsArray(path + ": inputs");
  for (size_t i = 0; i < ins.size(); ++i) {
    m.inputs.push_back(ParseTensorSpec(ins[i], path + ": inputs[" + std::to_string(i) + "]"));
  }
  const auto& outs = root.At("outputs", path).AsArray(path + ": outputs");
  for (size_t i = 0; i < outs.size(); ++i) {
    m.outputs.push_back(ParseTensorSpec(outs[i], path + ": outputs[" + std::to_string(i) + "]"));
  }
  const auto& ps = root.At("params", path).AsArray(path + ": params");
  for (size_t i = 0; i < ps.size(); ++i) {
    m.params.push_back(ParseParamSpec(ps[i], path + ": params[" + std::to_string(i) + "]"));
  }
  const json::Value& w = root.At("weights", path);
  m.layout_id = w.At("layout_id", path + ": weights").AsString(path + ": weights.layout_id");
  m.weights_dir = OptString(w, "dir", path + ": weights");
  m.transform = OptString(w, "transform", path + ": weights");
  const json::Value& e = root.At("embedding", path);
  m.tables = e.At("tables", path + ": embedding").AsIntList(path + ": embedding.tables");
  m.dense_input = e.At("dense_input", path + ": embedding").AsString(path + ": embedding.dense_input");
  m.indices_input = e.At("indices_input", path + ": embedding").AsString(path + ": embedding.indices_input");
  m.offsets_input = e.At("offsets_input", path + ": embedding").AsString(path + ": embedding.offsets_input");
  m.bags = OptString(e, "bags", path + ": embedding");
  // Manifests written before multi-hot test data have no ids_per_bag: one id per bag.
  if (e.Has("ids_per_bag")) m.ids_per_bag = e.At("ids_per_bag", path + ": embedding").AsInt(path + ": embedding.ids_per_bag");
  // A build always writes these; one without them was not made by `dlrm build`.
  m.build_tag = root.At("build", path).At("tag", path + ": build").AsString(path + ": build.tag");
  root.At("target", path).At("kind", path + ": target").AsString(path + ": target.kind");
  CheckEmbedding(m, path);
  std::vector<std::string> names;
  for (const json::Value& v : e.At("table_params", path + ": embedding").AsArray(path + ": embedding.table_params")) {
    names.push_back(v.AsString(path + ": embedding.table_params[]"));
  }
  CheckTableParams(&m, names, path);
  return m;
}

namespace {

/*! \brief Reads exactly \p n bytes at \p off of \p fd into \p out; false if the file is shorter. */
bool ReadAt(int fd, void* out, size_t n, off_t off) {
  return pread(fd, out, n, off) == static_cast<ssize_t>(n);
}

/*!
 * \brief The ELF headers of the library lie inside the file: dlopen maps a truncated library
 *        and the process dies of SIGBUS when it touches the missing pages, with no message.
 */
void CheckElf(const std::string& so_path) {
  int fd = open(so_path.c_str(), O_RDONLY | O_CLOEXEC);
  Require(fd >= 0, so_path + ": cannot open library: " + std::strerror(errno));
  struct stat st;
  Elf64_Ehdr eh;
  const bool header = fstat(fd, &st) == 0 && ReadAt(fd, &eh, sizeof(eh), 0) &&
                      std::memcmp(eh.e_ident, ELFMAG, SELFMAG) == 0 && eh.e_ident[EI_CLASS] == ELFCLASS64 &&
                      eh.e_phentsize == sizeof(Elf64_Phdr);
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  auto inside = [&](uint64_t off, uint64_t n) { return off <= size && n <= size - off; };
  uint64_t needed = 0;
  bool complete = header && inside(eh.e_phoff, uint64_t(eh.e_phnum) * eh.e_phentsize) &&
                  inside(eh.e_shoff, uint64_t(eh.e_shnum) * eh.e_shentsize);
  if (header) needed = std::max<uint64_t>(eh.e_shoff + uint64_t(eh.e_shnum) * eh.e_shentsize,
                                          eh.e_phoff + uint64_t(eh.e_phnum) * eh.e_phentsize);
  for (int i = 0; complete && i < eh.e_phnum; ++i) {
    Elf64_Phdr ph;
    complete = ReadAt(fd, &ph, sizeof(ph), static_cast<off_t>(eh.e_phoff + uint64_t(i) * sizeof(ph)));
    if (complete && ph.p_type == PT_LOAD) {
      needed = std::max<uint64_t>(needed, ph.p_offset + ph.p_filesz);
      complete = inside(ph.p_offset, ph.p_filesz);
    }
  }
  close(fd);
  Require(header, so_path + ": not a 64-bit ELF shared library");
  Require(complete, so_path + ": truncated or damaged library: " + std::to_string(size) +
                        " bytes, but its ELF headers describe " + std::to_string(needed) + "; rebuild it");
}

}  // namespace

void CheckLibrary(const Manifest& m, const std::string& so_path) {
  std::string actual = Sha256File(so_path);
  Require(actual == m.library_sha256,
          so_path + ": library does not match manifest " + m.path + " (sha256 expected " +
              m.library_sha256 + " for '" + m.library_file + "', actual " + actual +
              "); the manifest belongs to another build");
  CheckElf(so_path);
}

}  // namespace dlrm
