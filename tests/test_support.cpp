#include "tests/test_support.h"

#include <cstdio>
#include <stdexcept>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>

namespace fs = std::filesystem;

namespace memoreel::test {

std::string source_dir() {
    if (const char* env = std::getenv("MEMOREEL_SOURCE_DIR"))
        return env;
#ifdef MEMOREEL_DEFAULT_SOURCE_DIR
    return MEMOREEL_DEFAULT_SOURCE_DIR;
#else
    return ".";
#endif
}

std::string golden_dir() {
    if (const char* env = std::getenv("MEMOREEL_GOLDEN_DIR"))
        return env;
    return (fs::path(source_dir()) / ".." / "shared" / "golden" / "wan").lexically_normal().string();
}

std::string golden_file(const std::string& name) {
    return golden_dir() + "/" + name;
}

std::string memoreel_binary() {
    return (fs::read_symlink("/proc/self/exe").parent_path() / "memoreel").string();
}

TempDir::TempDir() {
    std::string templ = (fs::temp_directory_path() / "memoreel-test-XXXXXX").string();
    if (!::mkdtemp(templ.data()))
        throw std::runtime_error("mkdtemp failed");
    path_ = templ;
}

TempDir::~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
}

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
    if (a.numel() == 0)
        return 0.0;
    return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

CommandResult run_command(const std::string& cmd) {
    CommandResult r;
    FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
    if (!p)
        throw std::runtime_error("cannot run: " + cmd);
    char buf[512];
    while (std::fgets(buf, sizeof(buf), p))
        r.output += buf;
    r.status = ::pclose(p);
    return r;
}

}  // namespace memoreel::test
