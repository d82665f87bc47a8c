/*!
 * \file testdata.h
 * \brief The test data folder (dense/sparse/labels/reference .npy) and its batches.
 */
#ifndef DLRM_NATIVE_TESTDATA_H_
#define DLRM_NATIVE_TESTDATA_H_

#include <tvm/ffi/container/tensor.h>

#include <string>
#include <vector>

#include "manifest.h"
#include "npy.h"

namespace dlrm {

/*! \brief How out-of-range category ids are handled. */
enum class IdPolicy { kReject, kModulo };

/*! \brief The checked test data. */
struct TestData {
  NpyArray dense;      //!< float32 [N, F]
  NpyArray sparse;     //!< int64 [N, T], ids already checked (or wrapped)
  NpyArray labels;     //!< float32 [N]
  NpyArray reference;  //!< float32 [N]
  int64_t samples = 0;
  int64_t wrapped_ids = 0;  //!< ids changed by --ids modulo
};

/*! \brief One batch's input tensors, in the manifest's input order. */
struct Batch {
  std::vector<tvm::ffi::Tensor> inputs;
  int64_t start = 0;  //!< first sample
  int64_t count = 0;  //!< real (unpadded) samples
};

/*!
 * \brief Load and check the test data folder against the manifest: dtypes, shapes, finite dense
 *        values, ids in [0, tables[t]) (or wrapped with \p policy kModulo).
 */
TestData LoadTestData(const std::string& dir, const Manifest& m, IdPolicy policy);

/*! \brief Cut the test data into padded batches of the manifest's batch size (64-byte aligned). */
std::vector<Batch> MakeBatches(const TestData& d, const Manifest& m);

}  // namespace dlrm

#endif  // DLRM_NATIVE_TESTDATA_H_
