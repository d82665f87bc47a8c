/*!
 * \file metrics.cpp
 * \brief Accuracy, AUC and latency statistics.
 */
#include "metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace dlrm {

ErrorStats CompareOutputs(const float* a, const float* b, int64_t n) {
  ErrorStats s;
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    double d = std::fabs(static_cast<double>(a[i]) - static_cast<double>(b[i]));
    if (std::isnan(d)) {
      s.max_abs = std::numeric_limits<double>::quiet_NaN();
      s.mean_abs = s.max_abs;
      return s;
    }
    s.max_abs = std::max(s.max_abs, d);
    sum += d;
  }
  s.mean_abs = n > 0 ? sum / static_cast<double>(n) : 0.0;
  return s;
}

double Auc(const float* scores, const float* labels, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(scores[i])) return std::numeric_limits<double>::quiet_NaN();
  }
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return scores[x] < scores[y]; });
  double rank_sum_pos = 0.0;
  int64_t pos = 0;
  for (int64_t i = 0; i < n;) {
    int64_t j = i;
    while (j + 1 < n && scores[order[j + 1]] == scores[order[i]]) ++j;
    const double avg_rank = 0.5 * static_cast<double>(i + j) + 1.0;  // 1-based average rank
    for (int64_t k = i; k <= j; ++k) {
      if (labels[order[k]] > 0.5f) {
        rank_sum_pos += avg_rank;
        ++pos;
      }
    }
    i = j + 1;
  }
  const int64_t neg = n - pos;
  if (pos == 0 || neg == 0) return std::numeric_limits<double>::quiet_NaN();
  const double p = static_cast<double>(pos);
  return (rank_sum_pos - p * (p + 1.0) / 2.0) / (p * static_cast<double>(neg));
}

double Percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return std::numeric_limits<double>::quiet_NaN();
  const double pos = q / 100.0 * static_cast<double>(sorted.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  const double frac = pos - static_cast<double>(lo);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * frac;
}

LatencyStats Summarize(std::vector<double> values) {
  LatencyStats s;
  if (values.empty()) {
    s.mean = s.p50 = s.p90 = s.p99 = s.min = s.max = std::numeric_limits<double>::quiet_NaN();
    return s;
  }
  std::sort(values.begin(), values.end());
  s.mean = std::accumulate(values.begin(), values.end(), 0.0) / static_cast<double>(values.size());
  s.p50 = Percentile(values, 50);
  s.p90 = Percentile(values, 90);
  s.p99 = Percentile(values, 99);
  s.min = values.front();
  s.max = values.back();
  return s;
}

}  // namespace dlrm
