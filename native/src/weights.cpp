/*!
 * \file weights.cpp
 * \brief Checking and memory-mapping the weights folder.
 */
#include "weights.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cerrno>
#include <cstring>
#include <memory>

#include "digest.h"
#include "errors.h"
#include "json.h"

namespace dlrm {
namespace {

namespace ffi = tvm::ffi;

/*! \brief One read-only file mapping, unmapped on destruction. */
class Mapping {
 public:
  /*! \brief Map \p size bytes of the open file \p fd; throws naming \p path. */
  Mapping(int fd, size_t size, const std::string& path) : size_(size) {
    addr_ = mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
    if (addr_ == MAP_FAILED) {
      addr_ = nullptr;
      throw Error(path + ": mmap failed: " + std::strerror(errno));
    }
    // Lookups hit random rows: no read-ahead around each fault, which on a table larger than
    // memory reads mostly rows nobody asked for and evicts the hot ones. Advisory only.
    madvise(addr_, size, MADV_RANDOM);
  }
  ~Mapping() {
    if (addr_ != nullptr) munmap(addr_, size_);
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  /*! \brief Start of the mapping. */
  void* addr() const { return addr_; }

 private:
  void* addr_ = nullptr;
  size_t size_;
};

/*! \brief NDAlloc for Tensor::FromNDAlloc that points the tensor at a mapping (no copy). */
struct MappedAlloc {
  std::shared_ptr<Mapping> mapping;
  /*! \brief "Allocate": point at the mapped bytes. TVM only reads parameters. */
  void AllocData(DLTensor* t) { t->data = mapping->addr(); }
  /*! \brief Release this tensor's hold on the mapping. */
  void FreeData(DLTensor* t) {
    t->data = nullptr;
    mapping.reset();
  }
};

/*! \brief Closes a file descriptor on scope exit. */
struct FdCloser {
  int fd;
  ~FdCloser() {
    if (fd >= 0) close(fd);
  }
};

/*! \brief Check layout.json's id and parameter list against the manifest. */
void CheckLayout(const Manifest& m, const std::string& dir) {
  const std::string path = dir + "/layout.json";
  struct stat st;
  Require(stat(path.c_str(), &st) == 0,
          path + ": missing (is '" + dir + "' a weights folder?)");
  json::Value root = json::ParseFile(path);
  const std::string id = root.At("layout_id", path).AsString(path + ": layout_id");
  Require(id == m.layout_id, path + ": layout id '" + id + "' does not match the manifest's weights.layout_id '" +
                                 m.layout_id + "' (" + m.path + ")");
  const auto& ps = root.At("params", path).AsArray(path + ": params");
  Require(ps.size() == m.params.size(), path + ": lists " + std::to_string(ps.size()) +
                                            " parameters, the manifest " + std::to_string(m.params.size()));
  for (size_t i = 0; i < ps.size(); ++i) {
    const std::string w = path + ": params[" + std::to_string(i) + "]";
    const ParamSpec& p = m.params[i];
    Require(ps[i].At("file", w).AsString(w + ".file") == p.file &&
                ps[i].At("shape", w).AsIntList(w + ".shape") == p.shape &&
                ps[i].At("dtype", w).AsString(w + ".dtype") == p.dtype.name &&
                ps[i].At("sha256", w).AsString(w + ".sha256") == p.sha256,
            w + ": does not match the manifest's parameter '" + p.name + "' (" + p.file + ", " +
                p.dtype.name + " " + ShapeStr(p.shape) + ", sha256 " + p.sha256 + ")");
  }
}

/*! \brief Hash every parameter file and compare with the checksums the manifest records. */
void VerifyChecksums(const Manifest& m, const std::string& dir, int workers) {
  std::vector<std::string> paths;
  for (const ParamSpec& p : m.params) paths.push_back(dir + "/" + p.file);
  const std::vector<std::string> actual = Sha256Files(paths, workers);
  for (size_t i = 0; i < paths.size(); ++i) {
    const ParamSpec& p = m.params[i];
    Require(actual[i] == p.sha256, paths[i] + ": weight file for parameter '" + p.name +
                                       "' does not match its checksum (sha256 " + actual[i] +
                                       ", the manifest records " + p.sha256 +
                                       "): corrupted, or swapped with another file");
  }
}

/*! \brief Open, size-check and map one parameter file as a tensor. */
ffi::Tensor MapParam(const ParamSpec& p, const std::string& dir) {
  const std::string path = dir + "/" + p.file;
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  Require(fd >= 0, path + ": cannot open weight file for parameter '" + p.name + "': " +
                       std::strerror(errno));
  FdCloser closer{fd};
  struct stat st;
  Require(fstat(fd, &st) == 0 && S_ISREG(st.st_mode), path + ": not a regular file");
  Require(st.st_size == p.bytes, path + ": weight file for parameter '" + p.name + "' has " +
                                     std::to_string(st.st_size) + " bytes, expected " +
                                     std::to_string(p.bytes) + " (" + p.dtype.name + " " +
                                     ShapeStr(p.shape) + ")");
  auto mapping = std::make_shared<Mapping>(fd, static_cast<size_t>(p.bytes), path);
  return ffi::Tensor::FromNDAlloc(MappedAlloc{mapping}, ffi::ShapeView(p.shape.data(), p.shape.size()),
                                  p.dtype.dl, DLDevice{kDLCPU, 0});
}

}  // namespace

Weights MapWeights(const Manifest& m, const std::string& dir, bool verify, int workers) {
  struct stat st;
  Require(stat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode), dir + ": weights folder not found");
  CheckLayout(m, dir);
  Weights w;
  for (const ParamSpec& p : m.params) {
    w.tensors.push_back(MapParam(p, dir));
    w.total_bytes += p.bytes;
  }
  if (verify) {
    const auto t0 = std::chrono::steady_clock::now();
    VerifyChecksums(m, dir, workers);
    w.verify_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    w.verified = true;
  }
  return w;
}

}  // namespace dlrm
