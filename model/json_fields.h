// Reading a JSON config object field by field with type checks, where every error names the file and the
// field, and unknown fields are errors (a typo must not silently fall back to a default). Torch-free.
#pragma once

#include <nlohmann/json.hpp>

#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "model/safetensors.h"

namespace memoreel {

// Reads optional fields with type checks; every error names the file (where) and the field.
class JsonFields {
  public:
    JsonFields(const nlohmann::json& j, std::string where, std::string section)
        : j_(j), where_(std::move(where)), section_(std::move(section)) {
        if (!j_.is_object())
            fail("", "must be a JSON object");
    }
    [[noreturn]] void fail(const std::string& field, const std::string& what) const {
        std::string name = section_.empty() ? field : (field.empty() ? section_ : section_ + "." + field);
        throw CheckpointError(where_, "", (name.empty() ? "" : "field '" + name + "': ") + what);
    }
    template <typename T>
    void get(const char* field, T& out) {
        seen_.insert(field);
        if (!j_.contains(field))
            return;
        const auto& v = j_.at(field);
        // nlohmann converts 33.9 to 33 and 1e300 to undefined behaviour; integers must be written as
        // integers.
        if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
            if (!v.is_number_integer())
                fail(field, "must be an integer (is " + std::string(v.type_name()) + ")");
        }
        if constexpr (std::is_same_v<T, std::vector<int64_t>>) {
            if (!v.is_array())
                fail(field, "must be an array of integers");
            for (const auto& e : v)
                if (!e.is_number_integer())
                    fail(field, "must be an array of integers");
        }
        try {
            out = v.get<T>();
        } catch (const nlohmann::json::exception&) {
            fail(field, "has the wrong type (" + std::string(v.type_name()) + ")");
        }
    }
    // Fields that are read elsewhere (nested sections) or accepted for compatibility with official files.
    void accept(std::initializer_list<const char*> fields) {
        for (auto f : fields)
            seen_.insert(f);
    }
    // Unknown keys are errors: a typo in a config must not silently fall back to a default.
    void reject_unknown() const {
        for (auto it = j_.begin(); it != j_.end(); ++it) {
            if (!seen_.count(it.key()) && it.key().rfind("_", 0) != 0)
                fail(it.key(), "unknown field");
        }
    }

  private:
    const nlohmann::json& j_;
    std::string where_;
    std::string section_;
    std::set<std::string> seen_;
};

}  // namespace memoreel
