/*!
 * \file digest.h
 * \brief SHA-256 through OpenSSL's EVP interface (SHA-NI where the CPU has it).
 */
#ifndef DLRM_NATIVE_DIGEST_H_
#define DLRM_NATIVE_DIGEST_H_

#include <string>
#include <vector>

namespace dlrm {

/*! \brief Lower-case hex SHA-256 of the file at \p path; throws dlrm::Error if unreadable. */
std::string Sha256File(const std::string& path);
/*! \brief Lower-case hex SHA-256 of a byte string. */
std::string Sha256Bytes(const std::string& data);
/*!
 * \brief SHA-256 of each file of \p paths, hashed by up to \p workers threads (one file per
 *        thread at a time); the first error is rethrown after all threads have stopped.
 */
std::vector<std::string> Sha256Files(const std::vector<std::string>& paths, int workers);

}  // namespace dlrm

#endif  // DLRM_NATIVE_DIGEST_H_
