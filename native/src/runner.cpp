/*!
 * \file runner.cpp
 * \brief VM creation, thread pinning, warm-up and measured batch runs.
 */
#include "runner.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>

#include <tvm/ffi/container/array.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/string.h>

#include "errors.h"

namespace dlrm {
namespace {

namespace ffi = tvm::ffi;
using Clock = std::chrono::steady_clock;

/*! \brief Relax VM allocator type: pooled. */
constexpr int kPooledAllocator = 2;
/*! \brief TVM thread pool affinity mode: one core per thread from a given list. */
constexpr int kSpecifyOneCorePerThread = -2;
/*! \brief With iterations=auto, run enough passes for at least this many measured batches. */
constexpr int64_t kAutoMinBatches = 100;

/*! \brief Pin the calling thread to \p cpus. */
void PinCurrentThread(const std::vector<int>& cpus) {
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int c : cpus) CPU_SET(c, &set);
  pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

/*!
 * \brief Give the calling thread its own TVM thread pool over \p cpus (the pool is
 *        thread-local in TVM), via the runtime's `runtime.config_threadpool` global.
 */
void ConfigureThreadPool(const std::vector<int>& cpus, int threads) {
  auto f = ffi::Function::GetGlobal("runtime.config_threadpool");
  if (!f.has_value()) return;  // TVM_NUM_THREADS (set in main) still applies
  ffi::Array<ffi::String> list;
  for (int c : cpus) list.push_back(ffi::String(std::to_string(c)));
  (*f)(kSpecifyOneCorePerThread, threads, list);
}

/*! \brief Message of a TVM or standard exception, with its kind for TVM errors. */
std::string Describe(const std::exception& e) {
  if (auto* fe = dynamic_cast<const ffi::Error*>(&e)) return "TVM " + fe->kind() + ": " + fe->message();
  return e.what();
}

/*! \brief Call the entry function on one batch and return its output tensor, checked. */
ffi::Tensor CallBatch(const Instance& inst, const Manifest& m, const Batch& b,
                      const std::vector<ffi::Tensor>& weights, std::vector<ffi::AnyView>* args) {
  args->clear();
  for (const ffi::Tensor& t : b.inputs) args->emplace_back(t);
  for (const ffi::Tensor& t : weights) args->emplace_back(t);
  ffi::Any rv;
  inst.entry.CallPacked(args->data(), static_cast<int32_t>(args->size()), &rv);
  std::optional<ffi::Tensor> out = rv.try_cast<ffi::Tensor>();
  if (!out.has_value()) {
    throw Error("entry '" + m.entry + "' returned " + rv.GetTypeKey() + ", expected a tensor",
                kExitRuntime);
  }
  const ffi::Tensor& t = out.value();
  if (t.dtype().code != kDLFloat || t.dtype().bits != 32 || t.numel() != m.batch_size ||
      t.device().device_type != kDLCPU || !t.IsContiguous()) {
    throw Error("entry '" + m.entry + "' returned a tensor that is not float32 CPU [" +
                    std::to_string(m.batch_size) + ", 1]",
                kExitRuntime);
  }
  return out.value();
}

/*! \brief Shared state of the instance threads during one run. */
struct RunState {
  const Manifest* m;
  const RunOptions* o;
  const std::vector<Batch>* batches;
  const std::vector<ffi::Tensor>* weights;
  RunResult* result;
  std::atomic<int64_t> next_job{0};
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::atomic<bool> failed{false};
  std::mutex mu;
  std::string error;
  int error_code = 0;
  Clock::time_point end;  //!< when the last instance finished its measured jobs
};

/*! \brief Record the first error and stop the other threads. */
void Fail(RunState* s, const std::string& what, int code) {
  std::lock_guard<std::mutex> lock(s->mu);
  if (!s->failed.exchange(true)) {
    s->error = what;
    s->error_code = code;
  }
}

/*! \brief Copy the real samples of a batch's output into the result. */
void StoreOutputs(const Batch& b, const ffi::Tensor& out, RunResult* r) {
  const float* y = reinterpret_cast<const float*>(static_cast<const char*>(out.data_ptr()) +
                                                  out.byte_offset());
  std::memcpy(r->outputs.data() + b.start, y, sizeof(float) * b.count);
}

/*! \brief Body of one instance thread: pin, warm up, wait for all, then take measured jobs. */
void InstanceMain(RunState* s, const Instance& inst, std::vector<double>* lat) {
  try {
    PinCurrentThread(inst.cpus);
    ConfigureThreadPool(inst.cpus, s->o->threads);
    std::vector<ffi::AnyView> args;
    const auto& batches = *s->batches;
    const int64_t nb = static_cast<int64_t>(batches.size());
    for (int i = 0; i < s->o->warmup && !s->failed; ++i) {
      CallBatch(inst, *s->m, batches[i % nb], *s->weights, &args);
    }
    s->ready.fetch_add(1);
    while (!s->go.load() && !s->failed.load()) std::this_thread::yield();
    const int64_t total = nb * s->o->iterations;
    for (int64_t j = s->next_job.fetch_add(1); j < total && !s->failed; j = s->next_job.fetch_add(1)) {
      const Batch& b = batches[j % nb];
      auto t0 = Clock::now();
      ffi::Tensor out = CallBatch(inst, *s->m, b, *s->weights, &args);
      lat->push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
      if (j < nb) StoreOutputs(b, out, s->result);
    }
    std::lock_guard<std::mutex> lock(s->mu);
    s->end = std::max(s->end, Clock::now());
  } catch (const Error& e) {
    Fail(s, e.what(), e.code());
  } catch (const std::exception& e) {
    Fail(s, "while running '" + s->m->entry + "': " + Describe(e), kExitRuntime);
  }
}

}  // namespace

std::vector<int> AllowedCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    for (int c = 0; c < CPU_SETSIZE; ++c) {
      if (CPU_ISSET(c, &set)) cpus.push_back(c);
    }
  }
  if (cpus.empty()) {
    unsigned n = std::max(1u, std::thread::hardware_concurrency());
    for (unsigned c = 0; c < n; ++c) cpus.push_back(static_cast<int>(c));
  }
  return cpus;
}

void ResolveOptions(RunOptions* o, int64_t num_batches) {
  Require(o->instances >= 1 && o->instances <= 256, "--instances must be in [1, 256], got " + std::to_string(o->instances));
  Require(o->threads >= 0 && o->threads <= 1024, "--threads must be in [0, 1024], got " + std::to_string(o->threads));
  Require(o->warmup >= 0, "--warmup must be >= 0, got " + std::to_string(o->warmup));
  Require(o->iterations >= 0, "--iterations must be >= 0, got " + std::to_string(o->iterations));
  if (o->threads == 0) {
    o->threads = std::max<int>(1, static_cast<int>(AllowedCpus().size()) / o->instances);
  }
  if (o->iterations == 0) {
    o->iterations = static_cast<int>(std::max<int64_t>(1, (kAutoMinBatches + num_batches - 1) / num_batches));
  }
}

ffi::Module LoadLibrary(const std::string& so_path) {
  std::string path = so_path.find('/') == std::string::npos ? "./" + so_path : so_path;
  return ffi::Module::LoadFromFile(path);
}

std::vector<Instance> CreateInstances(const ffi::Module& lib, const Manifest& m,
                                      const RunOptions& o) {
  ffi::Optional<ffi::Function> load = lib->GetFunction("vm_load_executable", true);
  Require(load.has_value(), "library has no 'vm_load_executable': not a Relax VM library");
  const std::vector<int> cpus = AllowedCpus();
  std::vector<Instance> out;
  for (int i = 0; i < o.instances; ++i) {
    ffi::Module vm = (*load)().cast<ffi::Module>();
    ffi::Optional<ffi::Function> init = vm->GetFunction("vm_initialization", true);
    Require(init.has_value(), "VM module has no 'vm_initialization'");
    // The CPU is both the device and the host: list it twice.
    (*init)(static_cast<int>(kDLCPU), 0, kPooledAllocator, static_cast<int>(kDLCPU), 0, kPooledAllocator);
    ffi::Optional<ffi::Function> entry = vm->GetFunction(ffi::String(m.entry), true);
    Require(entry.has_value(), "library has no entry function '" + m.entry + "'");
    Instance inst{vm, entry.value(), {}};
    for (int k = 0; k < o.threads; ++k) {
      inst.cpus.push_back(cpus[(static_cast<size_t>(i) * o.threads + k) % cpus.size()]);
    }
    out.push_back(std::move(inst));
  }
  return out;
}

RunResult Run(std::vector<Instance>* instances, const Manifest& m, const RunOptions& o,
              const std::vector<Batch>& batches, const std::vector<ffi::Tensor>& weights,
              int64_t samples) {
  RunResult r;
  r.outputs.assign(static_cast<size_t>(samples), 0.0f);
  r.passes = o.iterations;
  RunState s;
  s.m = &m;
  s.o = &o;
  s.batches = &batches;
  s.weights = &weights;
  s.result = &r;
  std::vector<std::vector<double>> lat(instances->size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < instances->size(); ++i) {
    threads.emplace_back(InstanceMain, &s, std::cref((*instances)[i]), &lat[i]);
  }
  while (s.ready.load() < static_cast<int>(instances->size()) && !s.failed.load()) {
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  auto t0 = Clock::now();
  s.end = t0;
  s.go.store(true);
  // Wall time ends when the last instance finishes, not when its thread (and TVM pool) exits.
  for (auto& t : threads) t.join();
  r.wall_s = std::chrono::duration<double>(s.end - t0).count();
  if (s.failed) throw Error(s.error, s.error_code);
  for (auto& l : lat) r.latency_ms.insert(r.latency_ms.end(), l.begin(), l.end());
  r.measured_batches = static_cast<int64_t>(r.latency_ms.size());
  r.measured_samples = samples * o.iterations;
  return r;
}

}  // namespace dlrm
