/*!
 * \file json.cpp
 * \brief Typed access to tvm-ffi's parsed JSON, with errors that name the file and field.
 */
#include "json.h"

#include <cmath>
#include <fstream>
#include <optional>
#include <sstream>

#include <tvm/ffi/string.h>

#include "errors.h"

namespace dlrm {
namespace json {
namespace {

namespace ffi = tvm::ffi;

/*! \brief Nesting limit: tvm-ffi's parser recurses, so hostile input could overflow the stack. */
constexpr int kMaxDepth = 64;

/*! \brief Throw unless \p text nests brackets at most kMaxDepth deep (strings skipped). */
void CheckDepth(const std::string& text, const std::string& where) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      Require(++depth <= kMaxDepth, where + ": invalid JSON at byte " + std::to_string(i) + ": nesting too deep");
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
}

/*! \brief Type name of a JSON value for messages. */
std::string Kind(const ffi::Any& v) {
  if (v == nullptr) return "null";
  if (v.as<ffi::json::Object>()) return "an object";
  if (v.as<ffi::json::Array>()) return "an array";
  if (v.as<ffi::String>()) return "a string";
  if (v.as<bool>()) return "a boolean";
  if (v.as<int64_t>() || v.as<double>()) return "a number";
  return v.GetTypeKey();
}

}  // namespace

bool Value::Has(const std::string& key) const {
  auto obj = v_.as<ffi::json::Object>();
  return obj.has_value() && obj->count(ffi::String(key)) > 0;
}

Value Value::At(const std::string& key, const std::string& where) const {
  auto obj = v_.as<ffi::json::Object>();
  Require(obj.has_value(), where + ": expected an object, got " + Kind(v_));
  auto it = obj->find(ffi::String(key));
  Require(it != obj->end(), where + ": missing key '" + key + "'");
  return Value((*it).second);
}

std::string Value::AsString(const std::string& where) const {
  auto s = v_.as<ffi::String>();
  Require(s.has_value(), where + ": expected a string, got " + Kind(v_));
  return std::string(*s);
}

int64_t Value::AsInt(const std::string& where) const {
  // JSON booleans are not numbers here, although tvm-ffi converts them to int on request.
  Require(v_.type_index() != ffi::TypeIndex::kTVMFFIBool, where + ": expected an integer, got a boolean");
  if (auto i = v_.as<int64_t>()) return *i;
  auto d = v_.as<double>();
  Require(d.has_value() && std::isfinite(*d) && std::floor(*d) == *d && std::fabs(*d) < 9.0e15,
          where + ": expected an integer, got " + (d.has_value() ? std::to_string(*d) : Kind(v_)));
  return static_cast<int64_t>(*d);
}

std::vector<Value> Value::AsArray(const std::string& where) const {
  auto arr = v_.as<ffi::json::Array>();
  Require(arr.has_value(), where + ": expected an array, got " + Kind(v_));
  std::vector<Value> out;
  for (const ffi::Any& item : *arr) out.emplace_back(item);
  return out;
}

std::vector<int64_t> Value::AsIntList(const std::string& where) const {
  std::vector<int64_t> out;
  std::vector<Value> items = AsArray(where);
  for (size_t i = 0; i < items.size(); ++i) out.push_back(items[i].AsInt(where + "[" + std::to_string(i) + "]"));
  return out;
}

Value Parse(const std::string& text, const std::string& where) {
  CheckDepth(text, where);
  ffi::String error;
  ffi::json::Value v = ffi::json::Parse(ffi::String(text), &error);
  Require(error.empty(), where + ": invalid JSON: " + std::string(error));
  return Value(std::move(v));
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  Require(static_cast<bool>(in), path + ": cannot open for reading");
  std::ostringstream ss;
  ss << in.rdbuf();
  Require(!in.bad(), path + ": read failed");
  return ss.str();
}

Value ParseFile(const std::string& path) { return Parse(ReadFile(path), path); }

ffi::Any Number(double v) {
  if (!std::isfinite(v)) return ffi::Any(nullptr);
  return ffi::Any(v);
}

}  // namespace json
}  // namespace dlrm
