/*!
 * \file runner.h
 * \brief Loading the Relax library into VMs and running batches on pinned instance threads.
 */
#ifndef DLRM_NATIVE_RUNNER_H_
#define DLRM_NATIVE_RUNNER_H_

#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <string>
#include <vector>

#include "manifest.h"
#include "testdata.h"

namespace dlrm {

/*! \brief Options of a run. */
struct RunOptions {
  int warmup = 5;      //!< warm-up batches per instance (not timed)
  int iterations = 0;  //!< measured passes over the test data; 0 = auto (>= 100 batches)
  int threads = 0;     //!< TVM threads per instance; 0 = allowed CPUs / instances
  int instances = 1;   //!< VMs, each on its own pinned thread(s)
};

/*! \brief One VM instance: its module (kept alive) and its entry function. */
struct Instance {
  tvm::ffi::Module vm;
  tvm::ffi::Function entry;
  std::vector<int> cpus;  //!< CPUs this instance's threads are pinned to
};

/*! \brief What a run measured. */
struct RunResult {
  std::vector<float> outputs;       //!< one per sample, from the first measured pass
  std::vector<double> latency_ms;   //!< one per measured batch call, all instances
  double wall_s = 0.0;              //!< wall time of the measured part
  int64_t measured_samples = 0;     //!< real (unpadded) samples in the measured part
  int64_t measured_batches = 0;
  int passes = 0;
};

/*! \brief CPUs this process may run on (sched_getaffinity). */
std::vector<int> AllowedCpus();

/*! \brief Fill in defaults (threads, iterations) and check option ranges. */
void ResolveOptions(RunOptions* o, int64_t num_batches);

/*! \brief Load the library file (path made to contain a slash, as LoadFromFile needs). */
tvm::ffi::Module LoadLibrary(const std::string& so_path);

/*! \brief Create \p o.instances VMs (pooled CPU allocator) and assign each its CPUs. */
std::vector<Instance> CreateInstances(const tvm::ffi::Module& lib, const Manifest& m,
                                      const RunOptions& o);

/*! \brief Run warm-up then measured passes over \p batches on every instance's thread. */
RunResult Run(std::vector<Instance>* instances, const Manifest& m, const RunOptions& o,
              const std::vector<Batch>& batches, const std::vector<tvm::ffi::Tensor>& weights,
              int64_t samples);

}  // namespace dlrm

#endif  // DLRM_NATIVE_RUNNER_H_
