// Image quality metrics for the retrieval evaluation, torch-free, on single-channel float64 images
// (row-major).
//
// SSIM follows Wang et al. 2004 as scikit-image's structural_similarity computes it with
// gaussian_weights=True, use_sample_covariance=False (the settings that reproduce the authors' MATLAB code):
// an 11-tap Gaussian window (sigma 1.5, truncated at 3.5 sigma) applied separably with half-sample
// symmetric ("reflect") borders, K1 = 0.01, K2 = 0.03, and the mean of the SSIM map after cropping the
// (11 - 1) / 2 = 5 pixels of each border. Colour images are scored per channel and averaged.
#pragma once

#include <cstdint>
#include <vector>

namespace memoreel {

struct GrayImage {
    int width = 0;
    int height = 0;
    std::vector<double> pixels;  // height * width
};

// Mean SSIM of two images of the same size. data_range: the dynamic range (255 for 8-bit, 2 for [-1, 1]).
double ssim(const GrayImage& a, const GrayImage& b, double data_range);

// PSNR in dB (infinity for identical images).
double psnr(const GrayImage& a, const GrayImage& b, double data_range);

// Channel c (0, 1, 2) of an RGB24 buffer as a float64 image.
GrayImage channel_of_rgb(const uint8_t* rgb, int width, int height, int c);

// SSIM / PSNR of two RGB24 frames: SSIM averaged over the channels, PSNR over all samples.
double ssim_rgb(const uint8_t* a, const uint8_t* b, int width, int height);
double psnr_rgb(const uint8_t* a, const uint8_t* b, int width, int height);

}  // namespace memoreel
