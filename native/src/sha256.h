/*!
 * \file sha256.h
 * \brief SHA-256 of a file (FIPS 180-4), self-contained.
 */
#ifndef DLRM_NATIVE_SHA256_H_
#define DLRM_NATIVE_SHA256_H_

#include <string>

namespace dlrm {

/*! \brief Lower-case hex SHA-256 of the file at \p path; throws dlrm::Error if unreadable. */
std::string Sha256File(const std::string& path);
/*! \brief Lower-case hex SHA-256 of a byte string. */
std::string Sha256Bytes(const std::string& data);

}  // namespace dlrm

#endif  // DLRM_NATIVE_SHA256_H_
