// A small synchronous HTTP/1.1 GET over Beast for the load run: /readyz while the server starts, /metrics
// while it runs, and a session's status at the end. Every call has a deadline; failures are exceptions.
#pragma once

#include <cstdint>
#include <map>
#include <string>

namespace memoreel::bench {

struct HttpReply {
    int status = 0;
    std::string body;
};

HttpReply http_get(const std::string& host,
                   uint16_t port,
                   const std::string& target,
                   const std::map<std::string, std::string>& headers = {},
                   double timeout_s = 10);

// The sum over every series of a metric family in Prometheus text (name{labels} value lines); 0 when absent.
double prometheus_sum(const std::string& text, const std::string& name);

}  // namespace memoreel::bench
