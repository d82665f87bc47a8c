/*!
 * \file testdata.cpp
 * \brief Loading, checking and batching the test data folder.
 */
#include "testdata.h"

#include <cmath>
#include <cstdlib>
#include <cstring>

#include "errors.h"

namespace dlrm {
namespace {

namespace ffi = tvm::ffi;

/*! \brief NDAlloc with 64-byte aligned host memory (TVM kernels assume that alignment). */
struct AlignedAlloc {
  /*! \brief Allocate the tensor's bytes, rounded up to 64. */
  void AllocData(DLTensor* t) {
    size_t n = (ffi::GetDataSize(*t) + 63) / 64 * 64;
    t->data = std::aligned_alloc(64, n == 0 ? 64 : n);
    if (t->data == nullptr) throw Error("out of memory allocating a batch", kExitRuntime);
  }
  /*! \brief Free it. */
  void FreeData(DLTensor* t) { std::free(t->data); }
};

/*! \brief A new aligned host tensor. */
ffi::Tensor NewTensor(const TensorSpec& s) {
  return ffi::Tensor::FromNDAlloc(AlignedAlloc(), ffi::ShapeView(s.shape.data(), s.shape.size()),
                                  s.dtype.dl, DLDevice{kDLCPU, 0});
}

/*! \brief Reject NaN or infinite dense features. */
void CheckDenseFinite(const NpyArray& dense) {
  const float* x = dense.As<float>();
  const int64_t f = dense.shape[1];
  for (int64_t i = 0; i < NumElements(dense.shape); ++i) {
    Require(std::isfinite(x[i]), dense.path + ": sample " + std::to_string(i / f) + ", feature " +
                                     std::to_string(i % f) + " is " + std::to_string(x[i]) +
                                     " (dense features must be finite)");
  }
}

/*! \brief Check every id against its table size, or wrap it with modulo. Returns #wrapped. */
int64_t CheckIds(NpyArray* sparse, const std::vector<int64_t>& tables, IdPolicy policy) {
  int64_t* ids = reinterpret_cast<int64_t*>(sparse->data.data());
  const int64_t n = sparse->shape[0], t_count = sparse->shape[1];
  const int64_t k_count = sparse->shape.size() == 3 ? sparse->shape[2] : 1;
  int64_t wrapped = 0;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t t = 0; t < t_count; ++t) {
      for (int64_t k = 0; k < k_count; ++k) {
        int64_t& id = ids[(i * t_count + t) * k_count + k];
        const int64_t size = tables[t];
        if (id >= 0 && id < size) continue;
        Require(policy == IdPolicy::kModulo,
                sparse->path + ": sample " + std::to_string(i) + ", table " + std::to_string(t) +
                    (k_count > 1 ? ", id " + std::to_string(k) + " of the bag" : "") + ": id " +
                    std::to_string(id) + " is out of range [0, " + std::to_string(size) + ") (table size " +
                    std::to_string(size) + "; use --ids modulo to wrap ids)");
        id = ((id % size) + size) % size;
        ++wrapped;
      }
    }
  }
  return wrapped;
}

/*!
 * \brief Fill one batch's tensors from samples [start, start+B), repeating the last real one:
 *        K ids per bag, bag j of table t at lS_i[t, j*K .. j*K+K), offsets 0, K, 2K, ...
 */
void FillBatch(const TestData& d, const Manifest& m, Batch* b) {
  const int64_t B = m.batch_size, F = d.dense.shape[1], T = d.sparse.shape[1], K = m.ids_per_bag;
  float* dense = static_cast<float*>(b->inputs[m.InputIndex(m.dense_input)].data_ptr());
  int64_t* off = static_cast<int64_t*>(b->inputs[m.InputIndex(m.offsets_input)].data_ptr());
  int64_t* idx = static_cast<int64_t*>(b->inputs[m.InputIndex(m.indices_input)].data_ptr());
  const float* src_dense = d.dense.As<float>();
  const int64_t* src_ids = d.sparse.As<int64_t>();
  for (int64_t j = 0; j < B; ++j) {
    const int64_t s = b->start + std::min(j, b->count - 1);
    std::memcpy(dense + j * F, src_dense + s * F, sizeof(float) * F);
    for (int64_t t = 0; t < T; ++t) {
      off[t * B + j] = j * K;
      std::memcpy(idx + (t * B + j) * K, src_ids + (s * T + t) * K, sizeof(int64_t) * K);
    }
  }
}

/*!
 * \brief The ids per bag sparse.npy holds: [N, T] is one, [N, T, K] is K. It must be the
 *        manifest's: the library takes exactly K*B ids per table.
 */
std::vector<int64_t> SparseShape(const std::string& path, const Manifest& m, int64_t n, int64_t t) {
  const std::vector<int64_t> shape = NpyShape(path);
  const int64_t k = shape.size() == 3 ? shape[2] : 1;
  Require(shape.size() < 2 || shape.size() > 3 || k == m.ids_per_bag,
          path + ": holds " + std::to_string(k) + " id(s) per bag (" + ShapeStr(shape) + "), but the library " +
              m.path + " takes " + std::to_string(m.ids_per_bag) + " (embedding.ids_per_bag); use test data " +
              "prepared with --ids-per-bag " + std::to_string(m.ids_per_bag));
  if (m.ids_per_bag == 1 && shape.size() == 2) return {n, t};
  return {n, t, m.ids_per_bag};
}

}  // namespace

TestData LoadTestData(const std::string& dir, const Manifest& m, IdPolicy policy) {
  const TensorSpec& dense_in = m.inputs[m.InputIndex(m.dense_input)];
  const int64_t F = dense_in.shape[1], T = static_cast<int64_t>(m.tables.size());
  TestData d;
  d.dense = LoadNpy(dir + "/dense.npy", "float32", {-1, F});
  d.samples = d.dense.shape[0];
  const int64_t N = d.samples;
  Require(N > 0, d.dense.path + ": has no samples");
  d.sparse = LoadNpy(dir + "/sparse.npy", "int64", SparseShape(dir + "/sparse.npy", m, N, T));
  d.labels = LoadNpy(dir + "/labels.npy", "float32", {N});
  d.reference = LoadNpy(dir + "/reference.npy", "float32", {N});
  CheckDenseFinite(d.dense);
  d.wrapped_ids = CheckIds(&d.sparse, m.tables, policy);
  return d;
}

std::vector<Batch> MakeBatches(const TestData& d, const Manifest& m) {
  std::vector<Batch> out;
  for (int64_t start = 0; start < d.samples; start += m.batch_size) {
    Batch b;
    b.start = start;
    b.count = std::min(m.batch_size, d.samples - start);
    for (const TensorSpec& s : m.inputs) b.inputs.push_back(NewTensor(s));
    FillBatch(d, m, &b);
    out.push_back(std::move(b));
  }
  return out;
}

}  // namespace dlrm
