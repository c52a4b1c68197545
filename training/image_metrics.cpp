#include "training/image_metrics.h"

#include <cmath>
#include <limits>
#include <stdexcept>

namespace memoreel {

namespace {

// Normalised Gaussian taps for sigma and truncate (scipy.ndimage.gaussian_filter's radius rule).
std::vector<double> gaussian_taps(double sigma, double truncate) {
    const int radius = static_cast<int>(truncate * sigma + 0.5);
    std::vector<double> w(2 * radius + 1);
    double sum = 0;
    for (int i = -radius; i <= radius; ++i)
        sum += w[i + radius] = std::exp(-0.5 * i * i / (sigma * sigma));
    for (auto& v : w)
        v /= sum;
    return w;
}

// Half-sample symmetric index: ... 1 0 | 0 1 2 ... n-1 | n-1 n-2 ...
int reflect(int i, int n) {
    if (n == 1)
        return 0;
    const int period = 2 * n;
    i %= period;
    if (i < 0)
        i += period;
    return i < n ? i : period - 1 - i;
}

// Separable correlation with the taps (symmetric, so the same as convolution).
std::vector<double> filter(const std::vector<double>& x, int w, int h, const std::vector<double>& taps) {
    const int r = static_cast<int>(taps.size() / 2);
    std::vector<double> tmp(x.size()), out(x.size());
    for (int y = 0; y < h; ++y)
        for (int c = 0; c < w; ++c) {
            double s = 0;
            for (int k = -r; k <= r; ++k)
                s += taps[k + r] * x[static_cast<size_t>(y) * w + reflect(c + k, w)];
            tmp[static_cast<size_t>(y) * w + c] = s;
        }
    for (int y = 0; y < h; ++y)
        for (int c = 0; c < w; ++c) {
            double s = 0;
            for (int k = -r; k <= r; ++k)
                s += taps[k + r] * tmp[static_cast<size_t>(reflect(y + k, h)) * w + c];
            out[static_cast<size_t>(y) * w + c] = s;
        }
    return out;
}

void check_same(const GrayImage& a, const GrayImage& b) {
    if (a.width != b.width || a.height != b.height || a.pixels.size() != b.pixels.size() ||
        a.pixels.size() != static_cast<size_t>(a.width) * a.height)
        throw std::invalid_argument("image metrics: images differ in size");
}

}  // namespace

double ssim(const GrayImage& a, const GrayImage& b, double data_range) {
    check_same(a, b);
    const std::vector<double> taps = gaussian_taps(1.5, 3.5);
    const int pad = static_cast<int>(taps.size() / 2);
    const int w = a.width, h = a.height;
    if (w <= 2 * pad || h <= 2 * pad)
        throw std::invalid_argument("ssim: images must be larger than the 11-pixel window");
    const size_t n = a.pixels.size();
    std::vector<double> xx(n), yy(n), xy(n);
    for (size_t i = 0; i < n; ++i) {
        xx[i] = a.pixels[i] * a.pixels[i];
        yy[i] = b.pixels[i] * b.pixels[i];
        xy[i] = a.pixels[i] * b.pixels[i];
    }
    const auto ux = filter(a.pixels, w, h, taps), uy = filter(b.pixels, w, h, taps);
    const auto uxx = filter(xx, w, h, taps), uyy = filter(yy, w, h, taps), uxy = filter(xy, w, h, taps);
    const double c1 = std::pow(0.01 * data_range, 2), c2 = std::pow(0.03 * data_range, 2);
    double sum = 0;
    int64_t count = 0;
    for (int y = pad; y < h - pad; ++y)
        for (int x = pad; x < w - pad; ++x) {
            const size_t i = static_cast<size_t>(y) * w + x;
            const double vx = uxx[i] - ux[i] * ux[i], vy = uyy[i] - uy[i] * uy[i],
                         vxy = uxy[i] - ux[i] * uy[i];
            const double s = ((2 * ux[i] * uy[i] + c1) * (2 * vxy + c2)) /
                             ((ux[i] * ux[i] + uy[i] * uy[i] + c1) * (vx + vy + c2));
            sum += s;
            ++count;
        }
    return sum / static_cast<double>(count);
}

double psnr(const GrayImage& a, const GrayImage& b, double data_range) {
    check_same(a, b);
    double mse = 0;
    for (size_t i = 0; i < a.pixels.size(); ++i)
        mse += (a.pixels[i] - b.pixels[i]) * (a.pixels[i] - b.pixels[i]);
    mse /= static_cast<double>(a.pixels.size());
    return mse == 0 ? std::numeric_limits<double>::infinity()
                    : 10.0 * std::log10(data_range * data_range / mse);
}

GrayImage channel_of_rgb(const uint8_t* rgb, int width, int height, int c) {
    GrayImage g;
    g.width = width;
    g.height = height;
    g.pixels.resize(static_cast<size_t>(width) * height);
    for (size_t i = 0; i < g.pixels.size(); ++i)
        g.pixels[i] = rgb[i * 3 + c];
    return g;
}

double ssim_rgb(const uint8_t* a, const uint8_t* b, int width, int height) {
    double s = 0;
    for (int c = 0; c < 3; ++c)
        s += ssim(channel_of_rgb(a, width, height, c), channel_of_rgb(b, width, height, c), 255.0);
    return s / 3.0;
}

double psnr_rgb(const uint8_t* a, const uint8_t* b, int width, int height) {
    GrayImage x, y;
    x.width = y.width = width * 3;
    x.height = y.height = height;
    x.pixels.assign(a, a + static_cast<size_t>(width) * height * 3);
    y.pixels.assign(b, b + static_cast<size_t>(width) * height * 3);
    return psnr(x, y, 255.0);
}

}  // namespace memoreel
