/*!
 * \file main.cpp
 * \brief dlrm_infer: run a compiled DLRM Relax library on a test data folder and report
 *        load time, accuracy, AUC, latency and throughput.
 */
#include <stdlib.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/string.h>

#include "errors.h"
#include "json.h"
#include "manifest.h"
#include "metrics.h"
#include "runner.h"
#include "testdata.h"
#include "weights.h"

namespace {

namespace ffi = tvm::ffi;
using dlrm::Error;
using Clock = std::chrono::steady_clock;

/*! \brief Usage text. */
constexpr const char* kUsage =
    "usage: dlrm_infer <model.so> <model.json> <weights dir> <test data dir> [options]\n"
    "\n"
    "Runs a DLRM Relax library (built with its manifest model.json) on a test data folder\n"
    "(dense.npy, sparse.npy, labels.npy, reference.npy) with memory-mapped weights.\n"
    "\n"
    "options:\n"
    "  --warmup N         warm-up batches per instance, not timed (default 5)\n"
    "  --iterations N     measured passes over the whole test data; 0 = auto: enough passes\n"
    "                     for at least 100 measured batches (default 0)\n"
    "  --threads N        TVM threads per instance; 0 = allowed CPUs / instances (default 0)\n"
    "  --instances N      VMs run concurrently, each on its own pinned thread(s), sharing the\n"
    "                     mapped weights; batches are shared out dynamically (default 1)\n"
    "  --ids reject|modulo  out-of-range category ids: fail (default) or wrap id mod table size\n"
    "  --json FILE        also write the results as JSON (atomically, via FILE.tmp)\n"
    "  --outputs FILE     also write the model's output per sample as float32 .npy [N]\n"
    "  --no-verify-weights  do not hash the weight files against the manifest's checksums\n"
    "                     (sizes and table shapes are still checked); DLRM_VERIFY_WEIGHTS=0\n"
    "                     in the environment does the same\n"
    "  --help             show this text\n"
    "\n"
    "exit status: 0 ok, 2 bad input (files, manifest mismatch, ids, options), 1 runtime error\n";

/*! \brief Parsed command line. */
struct Args {
  std::string so, manifest, weights, testdata, json_out, outputs_out;
  dlrm::RunOptions run;
  dlrm::IdPolicy ids = dlrm::IdPolicy::kReject;
  bool verify_weights = true;
};

/*! \brief Parse a non-negative integer option value. */
int ParseInt(const std::string& opt, const std::string& v) {
  char* end = nullptr;
  long x = std::strtol(v.c_str(), &end, 10);
  dlrm::Require(!v.empty() && *end == '\0' && x >= 0 && x <= 1000000000,
                opt + " expects a non-negative integer, got '" + v + "'");
  return static_cast<int>(x);
}

/*! \brief Parse argv; prints usage and exits 0 on --help. */
Args ParseArgs(int argc, char** argv) {
  Args a;
  std::vector<std::string> pos;
  for (int i = 1; i < argc; ++i) {
    std::string s = argv[i];
    if (s == "--help" || s == "-h") {
      std::cout << kUsage;
      std::exit(0);
    }
    if (s.rfind("--", 0) != 0) {
      pos.push_back(s);
      continue;
    }
    if (s == "--no-verify-weights") {
      a.verify_weights = false;
      continue;
    }
    dlrm::Require(i + 1 < argc, "option " + s + " needs a value (see --help)");
    std::string v = argv[++i];
    if (s == "--warmup") a.run.warmup = ParseInt(s, v);
    else if (s == "--iterations") a.run.iterations = ParseInt(s, v);
    else if (s == "--threads") a.run.threads = ParseInt(s, v);
    else if (s == "--instances") a.run.instances = ParseInt(s, v);
    else if (s == "--json") a.json_out = v;
    else if (s == "--outputs") a.outputs_out = v;
    else if (s == "--ids") {
      dlrm::Require(v == "reject" || v == "modulo", "--ids expects reject or modulo, got '" + v + "'");
      a.ids = v == "modulo" ? dlrm::IdPolicy::kModulo : dlrm::IdPolicy::kReject;
    } else {
      throw Error("unknown option " + s + " (see --help)");
    }
  }
  dlrm::Require(pos.size() == 4, "expected 4 arguments <model.so> <model.json> <weights dir> "
                                 "<test data dir>, got " + std::to_string(pos.size()) + " (see --help)");
  a.so = pos[0];
  a.manifest = pos[1];
  a.weights = pos[2];
  a.testdata = pos[3];
  const char* env = std::getenv("DLRM_VERIFY_WEIGHTS");
  if (env != nullptr && std::string(env) == "0") a.verify_weights = false;
  return a;
}

/*! \brief Memory use of this process in KiB, from /proc/self/status (0 when unavailable). */
struct MemoryUse {
  int64_t peak_rss_kb = 0, rss_anon_kb = 0, rss_file_kb = 0;
};

/*! \brief Read VmHWM, RssAnon and RssFile: weights are file-backed, so RssAnon shows copies. */
MemoryUse ReadMemoryUse() {
  MemoryUse u;
  std::ifstream in("/proc/self/status");
  std::string key;
  int64_t value = 0;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    if (!(ls >> key >> value)) continue;
    if (key == "VmHWM:") u.peak_rss_kb = value;
    else if (key == "RssAnon:") u.rss_anon_kb = value;
    else if (key == "RssFile:") u.rss_file_kb = value;
  }
  return u;
}

/*! \brief Everything reported at the end. */
struct Report {
  const Args* args;
  const dlrm::Manifest* m;
  dlrm::RunOptions run;
  double load_ms = 0, weights_ms = 0, data_ms = 0, verify_ms = 0;
  bool weights_verified = false;
  int64_t weights_bytes = 0, samples = 0, batches = 0, wrapped_ids = 0;
  dlrm::ErrorStats err;
  double auc = 0, auc_reference = 0, throughput = 0;
  dlrm::LatencyStats lat;
  dlrm::RunResult res;
  std::vector<std::vector<int>> cpus;
  MemoryUse mem;
};

/*! \brief Milliseconds since \p t0. */
double MsSince(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

/*! \brief Print the human-readable summary. */
void PrintSummary(const Report& r) {
  std::printf("dlrm_infer: %s (manifest %s, build %s)\n", r.args->so.c_str(), r.args->manifest.c_str(),
              r.m->build_tag.empty() ? "?" : r.m->build_tag.c_str());
  std::printf("  samples %lld in %lld batches of %lld, %lld id(s) per bag; %d instance(s) x %d thread(s)\n",
              (long long)r.samples, (long long)r.batches, (long long)r.m->batch_size,
              (long long)r.m->ids_per_bag, r.run.instances, r.run.threads);
  std::printf("  load        %.1f ms (library + VMs), weights mapped %.1f ms (%.1f MB), test data %.1f ms\n",
              r.load_ms, r.weights_ms, r.weights_bytes / 1e6, r.data_ms);
  if (r.weights_verified) {
    std::printf("  checksums   weight files match the manifest's SHA-256 (hashed in %.1f ms)\n", r.verify_ms);
  } else {
    std::printf("  checksums   NOT verified (--no-verify-weights or DLRM_VERIFY_WEIGHTS=0)\n");
  }
  std::printf("  accuracy    max |err| %.3g, mean |err| %.3g vs reference\n", r.err.max_abs, r.err.mean_abs);
  std::printf("  AUC         %.6f (reference %.6f)\n", r.auc, r.auc_reference);
  std::printf("  latency     mean %.3f  p50 %.3f  p90 %.3f  p99 %.3f ms per batch (%lld calls, %d pass(es), %d warm-up)\n",
              r.lat.mean, r.lat.p50, r.lat.p90, r.lat.p99, (long long)r.res.measured_batches,
              r.res.passes, r.run.warmup);
  std::printf("  throughput  %.1f samples/s\n", r.throughput);
  std::printf("  memory      peak RSS %.1f MB (now: %.1f MB anonymous, %.1f MB file-backed incl. mapped weights)\n",
              r.mem.peak_rss_kb / 1024.0, r.mem.rss_anon_kb / 1024.0, r.mem.rss_file_kb / 1024.0);
  if (r.wrapped_ids > 0) std::printf("  note        %lld ids wrapped modulo table size\n", (long long)r.wrapped_ids);
}

/*! \brief A JSON array of integers. */
ffi::json::Array IntArray(const std::vector<int>& xs) {
  ffi::json::Array a;
  for (int x : xs) a.push_back(static_cast<int64_t>(x));
  return a;
}

/*! \brief The result as JSON text (docs in native/README.md); counts are integers. */
std::string ResultJson(const Report& r) {
  using dlrm::json::Number;
  namespace json = ffi::json;
  auto i64 = [](int64_t v) { return ffi::Any(v); };
  auto str = [](const std::string& v) { return ffi::Any(ffi::String(v)); };
  json::Object options{{"warmup", i64(r.run.warmup)}, {"iterations", i64(r.run.iterations)},
                       {"threads", i64(r.run.threads)}, {"instances", i64(r.run.instances)},
                       {"ids", str(r.args->ids == dlrm::IdPolicy::kModulo ? "modulo" : "reject")},
                       {"json", str(r.args->json_out)}, {"outputs", str(r.args->outputs_out)},
                       {"verify_weights", ffi::Any(r.args->verify_weights)}};
  json::Array cpus;
  for (const auto& c : r.cpus) cpus.push_back(IntArray(c));
  json::Object latency{{"mean", Number(r.lat.mean)}, {"p50", Number(r.lat.p50)}, {"p90", Number(r.lat.p90)},
                       {"p99", Number(r.lat.p99)},   {"min", Number(r.lat.min)}, {"max", Number(r.lat.max)}};
  json::Object o{
      {"format", str("dlrm-native-result")}, {"format_version", i64(1)},
      {"library", str(r.args->so)}, {"manifest", str(r.args->manifest)},
      {"weights_dir", str(r.args->weights)}, {"test_data_dir", str(r.args->testdata)},
      {"build_tag", str(r.m->build_tag)}, {"layout_id", str(r.m->layout_id)},
      {"options", options}, {"batch_size", i64(r.m->batch_size)},
      {"ids_per_bag", i64(r.m->ids_per_bag)}, {"samples", i64(r.samples)},
      {"batches", i64(r.batches)}, {"threads", i64(r.run.threads)}, {"instances", i64(r.run.instances)},
      {"cpus", cpus}, {"ids_wrapped", i64(r.wrapped_ids)}, {"load_ms", Number(r.load_ms)},
      {"weights_map_ms", Number(r.weights_ms)}, {"weights_bytes", i64(r.weights_bytes)},
      {"weights_verified", ffi::Any(r.weights_verified)}, {"weights_verify_ms", Number(r.verify_ms)},
      {"test_data_ms", Number(r.data_ms)}, {"max_abs_err", Number(r.err.max_abs)},
      {"mean_abs_err", Number(r.err.mean_abs)}, {"auc", Number(r.auc)},
      {"auc_reference", Number(r.auc_reference)}, {"latency_ms", latency},
      {"measured_batches", i64(r.res.measured_batches)}, {"measured_samples", i64(r.res.measured_samples)},
      {"passes", i64(r.res.passes)}, {"wall_s", Number(r.res.wall_s)},
      {"peak_rss_kb", i64(r.mem.peak_rss_kb)}, {"rss_anon_kb", i64(r.mem.rss_anon_kb)},
      {"rss_file_kb", i64(r.mem.rss_file_kb)},
      {"throughput_samples_per_s", Number(r.throughput)}};
  // tvm-ffi escapes every '/' as "\/"; undo that (always its own escape) so paths stay readable.
  std::string text = std::string(json::Stringify(o, 2)) + "\n", out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\\' && i + 1 < text.size() && text[i + 1] == '/') continue;
    out.push_back(text[i]);
  }
  return out;
}

/*! \brief Write \p text to \p path via path.tmp and rename (atomic). */
void WriteAtomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    dlrm::Require(static_cast<bool>(out), tmp + ": cannot open for writing");
    out << text;
    out.flush();
    dlrm::Require(static_cast<bool>(out), tmp + ": write failed");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw Error(path + ": cannot rename " + tmp + " into place");
  }
}

/*! \brief The outputs as a float32 [N] .npy file. */
std::string OutputsNpy(const std::vector<float>& y) {
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" +
                       std::to_string(y.size()) + ",), }";
  while ((10 + header.size() + 1) % 64 != 0) header.push_back(' ');
  header.push_back('\n');
  std::string out = std::string("\x93NUMPY\x01\x00", 8);
  out.push_back(static_cast<char>(header.size() & 0xff));
  out.push_back(static_cast<char>(header.size() >> 8));
  out += header;
  out.append(reinterpret_cast<const char*>(y.data()), y.size() * sizeof(float));
  return out;
}

/*! \brief Load the library and create the VMs, naming the file if TVM fails. */
std::vector<dlrm::Instance> LoadInstances(const Args& args, const dlrm::Manifest& m,
                                          const dlrm::RunOptions& o, std::optional<ffi::Module>* lib) {
  try {
    *lib = dlrm::LoadLibrary(args.so);
    return dlrm::CreateInstances(lib->value(), m, o);
  } catch (const ffi::Error& e) {
    throw Error(args.so + ": loading the library failed: TVM " + e.kind() + ": " + e.message(),
                dlrm::kExitRuntime);
  }
}

/*! \brief Set TVM_NUM_THREADS before any TVM thread pool exists. */
void SetThreadEnv(const dlrm::RunOptions& o) {
  setenv("TVM_NUM_THREADS", std::to_string(o.threads).c_str(), 1);
}

/*! \brief The whole program after argument parsing. */
int Main(const Args& args) {
  Report r;
  r.args = &args;
  dlrm::Manifest m = dlrm::LoadManifest(args.manifest);
  r.m = &m;
  dlrm::CheckLibrary(m, args.so);
  auto t0 = Clock::now();
  dlrm::Weights w = dlrm::MapWeights(m, args.weights, args.verify_weights,
                                     static_cast<int>(dlrm::AllowedCpus().size()));
  r.weights_ms = MsSince(t0) - w.verify_ms;  // mapping alone, as before checksums existed
  r.weights_verified = w.verified;
  r.verify_ms = w.verify_ms;
  r.weights_bytes = w.total_bytes;
  t0 = Clock::now();
  dlrm::TestData d = dlrm::LoadTestData(args.testdata, m, args.ids);
  std::vector<dlrm::Batch> batches = dlrm::MakeBatches(d, m);
  r.data_ms = MsSince(t0);
  r.samples = d.samples;
  r.batches = static_cast<int64_t>(batches.size());
  r.wrapped_ids = d.wrapped_ids;
  r.run = args.run;
  dlrm::ResolveOptions(&r.run, r.batches);
  SetThreadEnv(r.run);
  t0 = Clock::now();
  std::optional<ffi::Module> lib;
  std::vector<dlrm::Instance> inst = LoadInstances(args, m, r.run, &lib);
  r.load_ms = MsSince(t0);
  for (const auto& i : inst) r.cpus.push_back(i.cpus);
  r.res = dlrm::Run(&inst, m, r.run, batches, w.tensors, d.samples);
  r.err = dlrm::CompareOutputs(r.res.outputs.data(), d.reference.As<float>(), d.samples);
  r.auc = dlrm::Auc(r.res.outputs.data(), d.labels.As<float>(), d.samples);
  r.auc_reference = dlrm::Auc(d.reference.As<float>(), d.labels.As<float>(), d.samples);
  r.lat = dlrm::Summarize(r.res.latency_ms);
  r.mem = ReadMemoryUse();
  r.throughput = r.res.wall_s > 0 ? r.res.measured_samples / r.res.wall_s : 0.0;
  PrintSummary(r);
  if (!args.json_out.empty()) WriteAtomic(args.json_out, ResultJson(r));
  if (!args.outputs_out.empty()) WriteAtomic(args.outputs_out, OutputsNpy(r.res.outputs));
  return 0;
}

}  // namespace

/*! \brief Entry point: every failure is reported as "dlrm_infer: error: ..." with exit 1 or 2. */
int main(int argc, char** argv) {
  try {
    return Main(ParseArgs(argc, argv));
  } catch (const dlrm::Error& e) {
    std::cerr << "dlrm_infer: error: " << e.what() << std::endl;
    return e.code();
  } catch (const ffi::Error& e) {
    std::cerr << "dlrm_infer: error: TVM " << e.kind() << ": " << e.message() << std::endl;
    return dlrm::kExitRuntime;
  } catch (const std::exception& e) {
    std::cerr << "dlrm_infer: error: " << e.what() << std::endl;
    return dlrm::kExitRuntime;
  }
}
