// Prometheus text: what a scraper reads.
#include "control/metrics.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace cvmgate {
namespace {

TEST(Metrics, HelpTypeAndValue) {
  MetricsText m;
  m.Counter("accepted_total", "connections accepted", 18446744073709551615ull);
  m.Gauge("live_connections", "connections held now", 3u);
  m.Gauge("delta", "a signed gauge", int64_t{-2});
  EXPECT_EQ(m.text(),
            "# HELP cvmgate_accepted_total connections accepted\n# TYPE cvmgate_accepted_total counter\n"
            "cvmgate_accepted_total 18446744073709551615\n"
            "# HELP cvmgate_live_connections connections held now\n# TYPE cvmgate_live_connections gauge\n"
            "cvmgate_live_connections 3\n"
            "# HELP cvmgate_delta a signed gauge\n# TYPE cvmgate_delta gauge\ncvmgate_delta -2\n");
}

TEST(Metrics, MeasurementsKeepEveryDigit) {
  MetricsText m;
  m.Gauge("t", "a Unix time", 1764615688.25);
  m.Gauge("s", "seconds", 0.000125);
  m.Gauge("n", "not a number", std::nan(""));
  m.Gauge("i", "infinite", -std::numeric_limits<double>::infinity());
  const std::string& t = m.text();
  EXPECT_NE(t.find("\ncvmgate_t 1764615688.25\n"), std::string::npos) << t;
  EXPECT_NE(t.find("\ncvmgate_s 0.000125\n"), std::string::npos) << t;
  EXPECT_NE(t.find("\ncvmgate_n NaN\n"), std::string::npos) << t;
  EXPECT_NE(t.find("\ncvmgate_i -Inf\n"), std::string::npos) << t;
}

TEST(Metrics, HistogramBucketsAreCumulativeInSeconds) {
  MetricsText m;
  const int64_t upper_us[] = {500, 1000};
  m.Histogram("connect_seconds", "connects", upper_us, {2, 0, 3}, 1'500'000);
  EXPECT_EQ(m.text(),
            "# HELP cvmgate_connect_seconds connects\n# TYPE cvmgate_connect_seconds histogram\n"
            "cvmgate_connect_seconds_bucket{le=\"0.0005\"} 2\n"
            "cvmgate_connect_seconds_bucket{le=\"0.001\"} 2\n"
            "cvmgate_connect_seconds_bucket{le=\"+Inf\"} 5\n"
            "cvmgate_connect_seconds_sum 1.5\n"
            "cvmgate_connect_seconds_count 5\n");
}

TEST(Metrics, LabelValuesAreEscaped) {
  MetricsText m;
  m.GaugePerLabel("app_live_connections", "live", "app", {{"web", 3}, {"a\"b\\c\nd", 1}});
  EXPECT_NE(m.text().find("cvmgate_app_live_connections{app=\"web\"} 3\n"), std::string::npos) << m.text();
  EXPECT_NE(m.text().find("cvmgate_app_live_connections{app=\"a\\\"b\\\\c\\nd\"} 1\n"), std::string::npos)
      << m.text();
}

}  // namespace
}  // namespace cvmgate
