/*!
 * \file json.h
 * \brief Typed, error-naming access to JSON parsed by tvm-ffi's own parser
 *        (tvm/ffi/extra/json.h, in libtvm_ffi.so), and writing helpers.
 */
#ifndef DLRM_NATIVE_JSON_H_
#define DLRM_NATIVE_JSON_H_

#include <tvm/ffi/extra/json.h>

#include <cstdint>
#include <string>
#include <vector>

namespace dlrm {
namespace json {

/*!
 * \brief A parsed JSON value (an ffi::Any holding a Map, Array, String, int, float, bool or
 *        None) with accessors that throw dlrm::Error naming where the value came from.
 */
class Value {
 public:
  Value() = default;
  /*! \brief Wrap a tvm-ffi JSON value. */
  explicit Value(tvm::ffi::json::Value v) : v_(std::move(v)) {}

  /*! \brief True if JSON null. */
  bool IsNull() const { return v_ == nullptr; }
  /*! \brief True if this is an object holding \p key. */
  bool Has(const std::string& key) const;
  /*! \brief Member \p key of an object; throws naming \p where if absent or not an object. */
  Value At(const std::string& key, const std::string& where) const;
  /*! \brief This value as a string; throws naming \p where otherwise. */
  std::string AsString(const std::string& where) const;
  /*! \brief This value as an integer (a number with no fraction); throws naming \p where. */
  int64_t AsInt(const std::string& where) const;
  /*! \brief This value as an array; throws naming \p where otherwise. */
  std::vector<Value> AsArray(const std::string& where) const;
  /*! \brief This value as a list of integers; throws naming \p where otherwise. */
  std::vector<int64_t> AsIntList(const std::string& where) const;

 private:
  tvm::ffi::json::Value v_;
};

/*! \brief Parse JSON text; \p where names the source in error messages. */
Value Parse(const std::string& text, const std::string& where);
/*! \brief Read and parse a JSON file. */
Value ParseFile(const std::string& path);
/*! \brief The whole file as bytes; throws dlrm::Error naming it if unreadable. */
std::string ReadFile(const std::string& path);
/*! \brief A JSON number: non-finite values become null, as JSON has no NaN or infinity. */
tvm::ffi::Any Number(double v);

}  // namespace json
}  // namespace dlrm

#endif  // DLRM_NATIVE_JSON_H_
