/*!
 * \file manifest.h
 * \brief The build manifest (saved_model_<tag>.json), see docs/formats.md.
 */
#ifndef DLRM_NATIVE_MANIFEST_H_
#define DLRM_NATIVE_MANIFEST_H_

#include <dlpack/dlpack.h>

#include <cstdint>
#include <string>
#include <vector>

namespace dlrm {

/*! \brief A dtype name with its DLPack code and element size. */
struct DType {
  std::string name;
  DLDataType dl;
  size_t bytes;
};

/*! \brief The manifest format this runner reads (docs/formats.md). */
constexpr int64_t kManifestVersion = 2;

/*! \brief Look up a dtype by numpy-style name ("float32"); throws naming \p where. */
DType ParseDType(const std::string& name, const std::string& where);

/*! \brief A named input or output tensor of the entry function. */
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  DType dtype;
};

/*! \brief One runtime parameter: a file of the weights folder. */
struct ParamSpec {
  std::string name;
  std::string file;
  std::vector<int64_t> shape;
  DType dtype;
  int64_t bytes = 0;
  std::string sha256;  //!< hex SHA-256 of the file, recorded when the folder was written
};

/*! \brief The parts of the manifest the runner uses. */
struct Manifest {
  std::string path;
  std::string library_file;
  std::string library_sha256;
  std::string entry;
  int64_t batch_size = 0;
  std::vector<TensorSpec> inputs;
  std::vector<TensorSpec> outputs;
  std::vector<ParamSpec> params;
  std::string layout_id;
  std::string weights_dir;  //!< as written (relative to the manifest's folder)
  std::string transform;    //!< empty when null
  std::vector<int64_t> tables;
  std::string dense_input, indices_input, offsets_input, bags;
  int64_t ids_per_bag = 1;  //!< ids in every bag: lS_i holds ids_per_bag * B per table
  std::string build_tag;
  std::vector<size_t> table_params;  //!< index in params of each table's weight

  /*! \brief Index of the input named \p name; throws if absent. */
  size_t InputIndex(const std::string& name) const;
};

/*! \brief Product of a shape (number of elements). */
int64_t NumElements(const std::vector<int64_t>& shape);
/*! \brief Shape as "[a, b]" for messages. */
std::string ShapeStr(const std::vector<int64_t>& shape);

/*! \brief Read and check a manifest; every inconsistency is a dlrm::Error naming the file. */
Manifest LoadManifest(const std::string& path);

/*!
 * \brief Check the library file's SHA-256 against the manifest, and that its ELF headers lie
 *        inside the file (a truncated library would die of SIGBUS in dlopen).
 */
void CheckLibrary(const Manifest& m, const std::string& so_path);

}  // namespace dlrm

#endif  // DLRM_NATIVE_MANIFEST_H_
