/*!
 * \file npy.cpp
 * \brief A small .npy header parser and loader.
 */
#include "npy.h"

#include <cstring>
#include <fstream>

#include "errors.h"
#include "manifest.h"

namespace dlrm {
namespace {

/*! \brief Upper bound of a sane header length. */
constexpr uint32_t kMaxHeader = 1 << 20;

/*! \brief The parsed dictionary of a .npy header. */
struct NpyHeader {
  std::string descr;
  bool fortran = false;
  std::vector<int64_t> shape;
};

/*! \brief Value text after 'key': in the header dict, up to the next top-level comma. */
std::string DictValue(const std::string& h, const std::string& key, const std::string& path) {
  size_t k = h.find("'" + key + "'");
  if (k == std::string::npos) k = h.find("\"" + key + "\"");
  Require(k != std::string::npos, path + ": bad .npy header: no '" + key + "' entry");
  size_t colon = h.find(':', k + key.size() + 2);
  Require(colon != std::string::npos, path + ": bad .npy header near '" + key + "'");
  size_t start = colon + 1;
  while (start < h.size() && h[start] == ' ') ++start;
  if (start < h.size() && h[start] == '(') {
    size_t end = h.find(')', start);
    Require(end != std::string::npos, path + ": bad .npy header: unterminated shape");
    return h.substr(start, end - start + 1);
  }
  size_t end = h.find_first_of(",}", start);
  Require(end != std::string::npos, path + ": bad .npy header near '" + key + "'");
  return h.substr(start, end - start);
}

/*! \brief Parse "(a, b,)" into a shape. */
std::vector<int64_t> ParseShape(const std::string& s, const std::string& path) {
  std::vector<int64_t> shape;
  size_t i = 1;
  while (i < s.size()) {
    while (i < s.size() && (s[i] == ' ' || s[i] == ',')) ++i;
    if (i >= s.size() || s[i] == ')') break;
    Require(std::isdigit(static_cast<unsigned char>(s[i])), path + ": bad .npy shape " + s);
    int64_t v = 0;
    while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) {
      v = v * 10 + (s[i++] - '0');
      Require(v < (int64_t(1) << 48), path + ": .npy dimension too large in " + s);
    }
    shape.push_back(v);
  }
  return shape;
}

/*! \brief Parse the header dictionary text. */
NpyHeader ParseHeader(const std::string& h, const std::string& path) {
  NpyHeader out;
  std::string d = DictValue(h, "descr", path);
  Require(d.size() >= 2 && (d.front() == '\'' || d.front() == '"') && d.back() == d.front(),
          path + ": bad .npy descr " + d);
  out.descr = d.substr(1, d.size() - 2);
  std::string f = DictValue(h, "fortran_order", path);
  out.fortran = f.find("True") != std::string::npos;
  out.shape = ParseShape(DictValue(h, "shape", path), path);
  return out;
}

/*! \brief Map a numpy descr ("<f4") to a dtype name; "" if unsupported. */
std::string DescrToDType(const std::string& descr) {
  static const char* kMap[][2] = {{"<f4", "float32"}, {"<f8", "float64"}, {"<i8", "int64"},
                                  {"<i4", "int32"},   {"|i1", "int8"},    {"|u1", "uint8"},
                                  {"|b1", "bool"},    {"<f2", "float16"}};
  for (auto& row : kMap) {
    if (descr == row[0]) return row[1];
  }
  return "";
}

/*! \brief Read the magic, version and header text; leaves \p in at the data. */
std::string ReadHeaderText(std::ifstream& in, const std::string& path) {
  char magic[8];
  in.read(magic, 8);
  Require(in.gcount() == 8 && std::memcmp(magic, "\x93NUMPY", 6) == 0,
          path + ": not a .npy file (bad magic)");
  uint8_t major = static_cast<uint8_t>(magic[6]);
  Require(major >= 1 && major <= 3, path + ": unsupported .npy version " + std::to_string(major));
  uint32_t len = 0;
  unsigned char lb[4] = {0, 0, 0, 0};
  int nlen = major == 1 ? 2 : 4;
  in.read(reinterpret_cast<char*>(lb), nlen);
  Require(in.gcount() == nlen, path + ": truncated .npy header");
  for (int i = nlen - 1; i >= 0; --i) len = (len << 8) | lb[i];
  Require(len > 0 && len < kMaxHeader, path + ": bad .npy header length " + std::to_string(len));
  std::string header(len, '\0');
  in.read(&header[0], len);
  Require(in.gcount() == static_cast<std::streamsize>(len), path + ": truncated .npy header");
  return header;
}

}  // namespace

std::vector<int64_t> NpyShape(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  Require(static_cast<bool>(in), path + ": cannot open test data file");
  return ParseHeader(ReadHeaderText(in, path), path).shape;
}

NpyArray LoadNpy(const std::string& path, const std::string& dtype,
                 const std::vector<int64_t>& shape) {
  std::ifstream in(path, std::ios::binary);
  Require(static_cast<bool>(in), path + ": cannot open test data file");
  NpyHeader h = ParseHeader(ReadHeaderText(in, path), path);
  NpyArray a;
  a.path = path;
  a.shape = h.shape;
  a.dtype = DescrToDType(h.descr);
  Require(!h.fortran, path + ": Fortran-order .npy is not supported (expected C order)");
  Require(a.dtype == dtype, path + ": expected dtype " + dtype + ", got '" + h.descr + "'" +
                                (a.dtype.empty() ? "" : " (" + a.dtype + ")"));
  bool ok = a.shape.size() == shape.size();
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = shape[i] < 0 || shape[i] == a.shape[i];
  std::string want = ShapeStr(shape);
  Require(ok, path + ": expected shape " + want + " (-1 = any), got " + ShapeStr(a.shape));
  size_t item = ParseDType(dtype, path).bytes;
  size_t nbytes = static_cast<size_t>(NumElements(a.shape)) * item;
  a.data.resize(nbytes);
  in.read(a.data.data(), static_cast<std::streamsize>(nbytes));
  Require(in.gcount() == static_cast<std::streamsize>(nbytes),
          path + ": truncated .npy data: expected " + std::to_string(nbytes) + " bytes, got " +
              std::to_string(in.gcount()));
  return a;
}

}  // namespace dlrm
