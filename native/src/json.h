/*!
 * \file json.h
 * \brief A small JSON value, parser and writer (enough for manifests and results).
 */
#ifndef DLRM_NATIVE_JSON_H_
#define DLRM_NATIVE_JSON_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace dlrm {
namespace json {

/*! \brief A parsed JSON value; objects keep their keys sorted. */
struct Value {
  /*! \brief The JSON kinds. */
  enum class Kind { kNull, kBool, kNumber, kString, kArray, kObject };
  Kind kind = Kind::kNull;
  bool boolean = false;
  double number = 0.0;
  std::string string;
  std::vector<Value> array;
  std::map<std::string, Value> object;

  /*! \brief True if this is an object holding \p key. */
  bool Has(const std::string& key) const;
  /*! \brief Member \p key of an object; throws naming \p where if absent or not an object. */
  const Value& At(const std::string& key, const std::string& where) const;
  /*! \brief This value as a string; throws naming \p where otherwise. */
  const std::string& AsString(const std::string& where) const;
  /*! \brief This value as an integer (a number with no fraction); throws naming \p where. */
  int64_t AsInt(const std::string& where) const;
  /*! \brief This value as an array; throws naming \p where otherwise. */
  const std::vector<Value>& AsArray(const std::string& where) const;
  /*! \brief This value as a list of integers; throws naming \p where otherwise. */
  std::vector<int64_t> AsIntList(const std::string& where) const;
};

/*! \brief Parse JSON text; \p where names the source in error messages. */
Value Parse(const std::string& text, const std::string& where);
/*! \brief Read and parse a JSON file. */
Value ParseFile(const std::string& path);
/*! \brief Quote and escape a string as a JSON string literal. */
std::string Quote(const std::string& s);
/*! \brief Format a number as JSON (non-finite values become null). */
std::string Number(double v);

}  // namespace json
}  // namespace dlrm

#endif  // DLRM_NATIVE_JSON_H_
