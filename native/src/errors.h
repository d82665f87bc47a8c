/*!
 * \file errors.h
 * \brief Error type of the native runner: every failure becomes one of these.
 */
#ifndef DLRM_NATIVE_ERRORS_H_
#define DLRM_NATIVE_ERRORS_H_

#include <stdexcept>
#include <string>

namespace dlrm {

/*! \brief Process exit code for bad input (files, shapes, ids, options). */
constexpr int kExitBadInput = 2;
/*! \brief Process exit code for failures inside the runtime. */
constexpr int kExitRuntime = 1;

/*! \brief An error with a message for the user and the exit code it maps to. */
class Error : public std::runtime_error {
 public:
  /*! \brief Make an error; \p code is the process exit code. */
  explicit Error(const std::string& what, int code = kExitBadInput)
      : std::runtime_error(what), code_(code) {}
  /*! \brief The exit code this error maps to. */
  int code() const { return code_; }

 private:
  int code_;
};

/*! \brief Throw a bad-input Error when \p cond is false. */
inline void Require(bool cond, const std::string& what) {
  if (!cond) throw Error(what, kExitBadInput);
}

}  // namespace dlrm

#endif  // DLRM_NATIVE_ERRORS_H_
