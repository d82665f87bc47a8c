/*!
 * \file npy.h
 * \brief Reading NumPy .npy files (little-endian, C order) for the test data folder.
 */
#ifndef DLRM_NATIVE_NPY_H_
#define DLRM_NATIVE_NPY_H_

#include <cstdint>
#include <string>
#include <vector>

namespace dlrm {

/*! \brief A loaded .npy array: its dtype name, shape and raw bytes. */
struct NpyArray {
  std::string path;
  std::string dtype;  //!< numpy-style name, e.g. "float32"
  std::vector<int64_t> shape;
  std::vector<char> data;

  /*! \brief Typed view of the data (caller has checked the dtype). */
  template <typename T>
  const T* As() const { return reinterpret_cast<const T*>(data.data()); }
};

/*!
 * \brief Load \p path and check it holds \p dtype with \p shape (-1 = any size).
 * Throws dlrm::Error naming the file with expected vs actual.
 */
NpyArray LoadNpy(const std::string& path, const std::string& dtype,
                 const std::vector<int64_t>& shape);

/*! \brief The shape in \p path's header, without reading the data (throws like LoadNpy). */
std::vector<int64_t> NpyShape(const std::string& path);

}  // namespace dlrm

#endif  // DLRM_NATIVE_NPY_H_
