/*!
 * \file digest.cpp
 * \brief SHA-256 of files and strings with OpenSSL.
 */
#include "digest.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>

#include "errors.h"

namespace dlrm {
namespace {

/*! \brief Read size: large enough that the syscalls cost nothing next to hashing. */
constexpr size_t kChunk = 4u << 20;

/*! \brief One SHA-256 computation; the EVP context is freed on destruction. */
class Sha256 {
 public:
  Sha256() : ctx_(EVP_MD_CTX_new(), EVP_MD_CTX_free) {
    if (!ctx_ || EVP_DigestInit_ex(ctx_.get(), EVP_sha256(), nullptr) != 1) {
      throw Error("OpenSSL cannot start a SHA-256 digest", kExitRuntime);
    }
  }
  /*! \brief Hash \p n more bytes. */
  void Update(const void* data, size_t n) {
    if (EVP_DigestUpdate(ctx_.get(), data, n) != 1) throw Error("OpenSSL SHA-256 update failed", kExitRuntime);
  }
  /*! \brief The digest as lower-case hex. */
  std::string Hex() {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (EVP_DigestFinal_ex(ctx_.get(), md, &len) != 1) throw Error("OpenSSL SHA-256 final failed", kExitRuntime);
    static const char kHex[] = "0123456789abcdef";
    std::string out;
    for (unsigned int i = 0; i < len; ++i) {
      out.push_back(kHex[md[i] >> 4]);
      out.push_back(kHex[md[i] & 15]);
    }
    return out;
  }

 private:
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx_;
};

}  // namespace

std::string Sha256File(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  Require(fd >= 0, path + ": cannot open: " + std::strerror(errno));
  std::unique_ptr<char[]> buf(new char[kChunk]);
  Sha256 sha;
  for (;;) {
    ssize_t n = read(fd, buf.get(), kChunk);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      close(fd);
      throw Error(path + ": read failed: " + std::strerror(err));
    }
    if (n == 0) break;
    sha.Update(buf.get(), static_cast<size_t>(n));
  }
  close(fd);
  return sha.Hex();
}

std::string Sha256Bytes(const std::string& data) {
  Sha256 sha;
  sha.Update(data.data(), data.size());
  return sha.Hex();
}

std::vector<std::string> Sha256Files(const std::vector<std::string>& paths, int workers) {
  std::vector<std::string> out(paths.size());
  std::atomic<size_t> next{0};
  std::mutex mu;
  std::exception_ptr error;
  auto work = [&]() {
    for (size_t i = next.fetch_add(1); i < paths.size(); i = next.fetch_add(1)) {
      try {
        out[i] = Sha256File(paths[i]);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu);
        if (!error) error = std::current_exception();
        next.store(paths.size());
      }
    }
  };
  std::vector<std::thread> threads;
  const size_t n = std::min<size_t>(paths.size(), static_cast<size_t>(std::max(1, workers)));
  for (size_t t = 1; t < n; ++t) threads.emplace_back(work);
  work();
  for (auto& t : threads) t.join();
  if (error) std::rethrow_exception(error);
  return out;
}

}  // namespace dlrm
