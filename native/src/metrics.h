/*!
 * \file metrics.h
 * \brief Accuracy, AUC and latency statistics.
 */
#ifndef DLRM_NATIVE_METRICS_H_
#define DLRM_NATIVE_METRICS_H_

#include <cstdint>
#include <vector>

namespace dlrm {

/*! \brief Absolute error of outputs against a reference. */
struct ErrorStats {
  double max_abs = 0.0;
  double mean_abs = 0.0;
};

/*! \brief Latency distribution in milliseconds. */
struct LatencyStats {
  double mean = 0.0, p50 = 0.0, p90 = 0.0, p99 = 0.0, min = 0.0, max = 0.0;
};

/*! \brief Max and mean |a - b| over n values (NaN if any output is NaN). */
ErrorStats CompareOutputs(const float* a, const float* b, int64_t n);

/*! \brief ROC AUC of \p scores against 0/1 \p labels, rank-based with tied ranks averaged.
 *  NaN when only one class is present. */
double Auc(const float* scores, const float* labels, int64_t n);

/*! \brief Percentile \p q in [0,100] of sorted values, linear interpolation (numpy default). */
double Percentile(const std::vector<double>& sorted, double q);

/*! \brief Mean, p50, p90, p99, min and max of \p values. */
LatencyStats Summarize(std::vector<double> values);

}  // namespace dlrm

#endif  // DLRM_NATIVE_METRICS_H_
