// The one writer of Prometheus' text exposition format (version 0.0.4) in
// cvmgate: every metric gets its HELP and TYPE lines and the cvmgate_ prefix;
// counts are written as integers, measurements as the shortest decimal that
// reads back as the same double (so a Unix time keeps every digit).
#pragma once

#include <concepts>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace cvmgate {

class MetricsText {
 public:
  // `name` without the cvmgate_ prefix; a counter's ends in _total.
  void Counter(std::string_view name, std::string_view help, uint64_t value);
  void Gauge(std::string_view name, std::string_view help, std::integral auto value) {
    IntegerGauge(name, help, static_cast<int64_t>(value));
  }
  void Gauge(std::string_view name, std::string_view help, double value);
  // One gauge per index i of `values`, told apart by the label `label`="i" (e.g. worker="0").
  void GaugePerIndex(std::string_view name, std::string_view help, std::string_view label,
                     const std::vector<int64_t>& values);
  // One counter per (label value, count), e.g. reason="unknown_app".
  void CounterPerLabel(std::string_view name, std::string_view help, std::string_view label,
                       const std::vector<std::pair<std::string, uint64_t>>& values);
  // One gauge per (label value, value), e.g. app="web".
  void GaugePerLabel(std::string_view name, std::string_view help, std::string_view label,
                     const std::vector<std::pair<std::string, int64_t>>& values);
  // A histogram of microseconds, written in seconds: `counts` per bucket (not cumulative), the last
  // one above every bound in `upper_us`.
  void Histogram(std::string_view name, std::string_view help, std::span<const int64_t> upper_us,
                 const std::vector<uint64_t>& counts, uint64_t sum_us);
  // Text another writer made (the workers' part), appended as it is.
  void Append(std::string_view text) { out_.append(text); }

  const std::string& text() const { return out_; }
  std::string Take() { return std::move(out_); }

 private:
  void IntegerGauge(std::string_view name, std::string_view help, int64_t value);
  void Head(std::string_view name, std::string_view help, std::string_view type);
  void Family(std::string_view name, std::string_view help, std::string_view type);
  template <typename T>
  void PerLabel(std::string_view name, std::string_view help, std::string_view type, std::string_view label,
                const std::vector<std::pair<std::string, T>>& values);
  void Number(double value);
  std::string out_;
};

}  // namespace cvmgate
