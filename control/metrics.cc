// Prometheus text exposition (see metrics.h).
#include "control/metrics.h"

#include <charconv>
#include <cmath>

#include <absl/strings/str_cat.h>

#include "dataplane/strings.h"

namespace cvmgate {

void MetricsText::Family(std::string_view name, std::string_view help, std::string_view type) {
  absl::StrAppend(&out_, "# HELP cvmgate_", AbslView(name), " ", AbslView(help), "\n# TYPE cvmgate_", AbslView(name),
                  " ", AbslView(type), "\n");
}

void MetricsText::Head(std::string_view name, std::string_view help, std::string_view type) {
  Family(name, help, type);
  absl::StrAppend(&out_, "cvmgate_", AbslView(name), " ");
}

namespace {

// A label value as the exposition format quotes it.
void AppendLabelValue(std::string_view v, std::string& out) {
  for (char ch : v) {
    if (ch == '\\' || ch == '"') out += '\\';
    if (ch == '\n') {
      out += "\\n";
      continue;
    }
    out += ch;
  }
}

}  // namespace

void MetricsText::CounterPerLabel(std::string_view name, std::string_view help, std::string_view label,
                                  const std::vector<std::pair<std::string, uint64_t>>& values) {
  PerLabel(name, help, "counter", label, values);
}

void MetricsText::GaugePerLabel(std::string_view name, std::string_view help, std::string_view label,
                                const std::vector<std::pair<std::string, int64_t>>& values) {
  PerLabel(name, help, "gauge", label, values);
}

template <typename T>
void MetricsText::PerLabel(std::string_view name, std::string_view help, std::string_view type,
                           std::string_view label, const std::vector<std::pair<std::string, T>>& values) {
  Family(name, help, type);
  for (const auto& [value, v] : values) {
    absl::StrAppend(&out_, "cvmgate_", AbslView(name), "{", AbslView(label), "=\"");
    AppendLabelValue(value, out_);
    absl::StrAppend(&out_, "\"} ", v, "\n");
  }
}

void MetricsText::Histogram(std::string_view name, std::string_view help, std::span<const int64_t> upper_us,
                            const std::vector<uint64_t>& counts, uint64_t sum_us) {
  Family(name, help, "histogram");
  uint64_t cumulative = 0;
  for (size_t b = 0; b <= upper_us.size(); ++b) {
    cumulative += b < counts.size() ? counts[b] : 0;
    absl::StrAppend(&out_, "cvmgate_", AbslView(name), "_bucket{le=\"");
    if (b < upper_us.size()) {
      char buf[32];  // shortest fixed notation: le="0.0005", as client libraries write it
      auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), static_cast<double>(upper_us[b]) / 1e6,
                                     std::chars_format::fixed);
      out_.append(buf, end);
    } else {
      out_ += "+Inf";
    }
    absl::StrAppend(&out_, "\"} ", cumulative, "\n");
  }
  absl::StrAppend(&out_, "cvmgate_", AbslView(name), "_sum ");
  Number(static_cast<double>(sum_us) / 1e6);
  absl::StrAppend(&out_, "\ncvmgate_", AbslView(name), "_count ", cumulative, "\n");
}

void MetricsText::Number(double value) {
  if (std::isnan(value)) {
    out_ += "NaN";
  } else if (std::isinf(value)) {
    out_ += value > 0 ? "+Inf" : "-Inf";
  } else {
    char buf[32];
    auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), value);
    out_.append(buf, end);
  }
}

void MetricsText::Counter(std::string_view name, std::string_view help, uint64_t value) {
  Head(name, help, "counter");
  absl::StrAppend(&out_, value, "\n");
}

void MetricsText::GaugePerIndex(std::string_view name, std::string_view help, std::string_view label,
                                const std::vector<int64_t>& values) {
  Family(name, help, "gauge");
  for (size_t i = 0; i < values.size(); ++i) {
    absl::StrAppend(&out_, "cvmgate_", AbslView(name), "{", AbslView(label), "=\"", i, "\"} ", values[i], "\n");
  }
}

void MetricsText::IntegerGauge(std::string_view name, std::string_view help, int64_t value) {
  Head(name, help, "gauge");
  absl::StrAppend(&out_, value, "\n");
}

void MetricsText::Gauge(std::string_view name, std::string_view help, double value) {
  Head(name, help, "gauge");
  Number(value);
  out_ += "\n";
}

}  // namespace cvmgate
