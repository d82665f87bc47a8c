/*!
 * \file weights.h
 * \brief The weights folder: checked, memory-mapped read-only, wrapped as DLPack tensors.
 */
#ifndef DLRM_NATIVE_WEIGHTS_H_
#define DLRM_NATIVE_WEIGHTS_H_

#include <tvm/ffi/container/tensor.h>

#include <string>
#include <vector>

#include "manifest.h"

namespace dlrm {

/*! \brief The parameters as zero-copy tensors over read-only file mappings. */
struct Weights {
  std::vector<tvm::ffi::Tensor> tensors;  //!< in manifest params order
  int64_t total_bytes = 0;
  bool verified = false;  //!< every file's SHA-256 was checked against the manifest
  double verify_ms = 0;   //!< time the checksums took
};

/*!
 * \brief Check \p dir against the manifest (layout.json id and parameter list, every
 *        file's size) and map every parameter file with mmap(PROT_READ, MAP_SHARED); with
 *        \p verify, also hash every file (\p workers threads) against the manifest's
 *        checksums. The mappings live as long as the tensors. Throws dlrm::Error on any mismatch.
 */
Weights MapWeights(const Manifest& m, const std::string& dir, bool verify, int workers);

}  // namespace dlrm

#endif  // DLRM_NATIVE_WEIGHTS_H_
