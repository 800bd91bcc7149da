// Prometheus text exposition (see metrics.h).
#include "control/metrics.h"

#include <charconv>
#include <cmath>

#include <absl/strings/str_cat.h>

#include "dataplane/strings.h"

namespace cvmgate {

void MetricsText::Head(std::string_view name, std::string_view help, std::string_view type) {
  absl::StrAppend(&out_, "# HELP cvmgate_", AbslView(name), " ", AbslView(help), "\n# TYPE cvmgate_", AbslView(name),
                  " ", AbslView(type), "\ncvmgate_", AbslView(name), " ");
}

void MetricsText::Counter(std::string_view name, std::string_view help, uint64_t value) {
  Head(name, help, "counter");
  absl::StrAppend(&out_, value, "\n");
}

void MetricsText::GaugePerIndex(std::string_view name, std::string_view help, std::string_view label,
                                const std::vector<int64_t>& values) {
  absl::StrAppend(&out_, "# HELP cvmgate_", AbslView(name), " ", AbslView(help), "\n# TYPE cvmgate_", AbslView(name),
                  " gauge\n");
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
  if (std::isnan(value)) {
    out_ += "NaN\n";
  } else if (std::isinf(value)) {
    out_ += value > 0 ? "+Inf\n" : "-Inf\n";
  } else {
    char buf[32];
    auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), value);
    out_.append(buf, end);
    out_ += "\n";
  }
}

}  // namespace cvmgate
