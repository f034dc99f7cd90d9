//! The CPU backend: SIMD resampling with fast_image_resize, the reference for the GPU.
//!
//! Thumb and lq are one Lanczos3 convolution from the source (the filter widens with the ratio,
//! so large reductions are antialiased). The blur placeholder is an area (box) reduction followed
//! by the Gaussian of [`crate::ops::gaussian_blur_rgba`]. With alpha, resampling is done on
//! premultiplied colour (fast_image_resize multiplies and divides around the convolution) and the
//! blur premultiplies explicitly, so transparent pixels do not darken their neighbours.
//!
//! The resizer's internal buffers are kept between requests.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use super::{Backend, BackendError, RenderedImage};
use crate::decode::SourceImage;
use crate::ops::{self, RenditionSpec};

pub struct CpuBackend {
    resizer: Resizer,
}

impl CpuBackend {
    pub fn new() -> CpuBackend {
        CpuBackend {
            resizer: Resizer::new(),
        }
    }

    fn resample(
        &mut self,
        source: &SourceImage,
        width: u32,
        height: u32,
        filter: FilterType,
    ) -> Result<Vec<u8>, BackendError> {
        if (width, height) == (source.width, source.height) {
            return Ok(source.pixels.clone());
        }
        let src = ImageRef::new(source.width, source.height, &source.pixels, PixelType::U8x4)
            .map_err(|err| {
                BackendError::Job(format!("source buffer does not match its size: {err}"))
            })?;
        let mut dst = Image::new(width, height, PixelType::U8x4);
        let options = ResizeOptions::new()
            .resize_alg(ResizeAlg::Convolution(filter))
            .use_alpha(source.has_alpha);
        self.resizer
            .resize(&src, &mut dst, &options)
            .map_err(|err| {
                BackendError::Job(format!("resize to {width}×{height} failed: {err}"))
            })?;
        Ok(dst.into_vec())
    }
}

impl Default for CpuBackend {
    fn default() -> Self {
        CpuBackend::new()
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn describe(&self) -> String {
        format!(
            "cpu backend (fast_image_resize, {:?})",
            self.resizer.cpu_extensions()
        )
    }

    fn render(
        &mut self,
        source: &SourceImage,
        plan: &[RenditionSpec],
    ) -> Result<Vec<RenderedImage>, BackendError> {
        plan.iter()
            .map(|spec| {
                let (width, height) =
                    ops::fit_within(source.width, source.height, spec.size, spec.size);
                let pixels = if spec.rendition.is_blurred() {
                    let mut pixels = self.resample(source, width, height, FilterType::Box)?;
                    blur(&mut pixels, width, height, spec.sigma, source.has_alpha);
                    pixels
                } else {
                    self.resample(source, width, height, FilterType::Lanczos3)?
                };
                Ok(RenderedImage {
                    spec: *spec,
                    width,
                    height,
                    pixels,
                })
            })
            .collect()
    }
}

fn blur(pixels: &mut [u8], width: u32, height: u32, sigma: f32, has_alpha: bool) {
    if has_alpha {
        ops::premultiply_rgba(pixels);
    }
    ops::gaussian_blur_rgba(pixels, width, height, sigma);
    if has_alpha {
        ops::unpremultiply_rgba(pixels);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::Rendition;

    fn spec(rendition: Rendition, size: u32) -> RenditionSpec {
        RenditionSpec {
            rendition,
            size,
            quality: 80.0,
            sigma: 3.0,
        }
    }

    fn checkerboard(width: u32, height: u32) -> SourceImage {
        let mut pixels = Vec::new();
        for y in 0..height {
            for x in 0..width {
                let v = if (x / 4 + y / 4) % 2 == 0 { 255 } else { 0 };
                pixels.extend_from_slice(&[v, v, v, 255]);
            }
        }
        SourceImage {
            width,
            height,
            pixels,
            has_alpha: false,
        }
    }

    #[test]
    fn renditions_have_fitted_sizes_in_plan_order() {
        let mut backend = CpuBackend::new();
        let plan = [
            spec(Rendition::Thumb, 32),
            spec(Rendition::Blur, 8),
            spec(Rendition::Lq, 400),
        ];
        let out = backend.render(&checkerboard(200, 100), &plan).unwrap();
        let sizes: Vec<_> = out
            .iter()
            .map(|r| (r.spec.rendition, r.width, r.height))
            .collect();
        assert_eq!(
            sizes,
            vec![
                (Rendition::Thumb, 32, 16),
                (Rendition::Blur, 8, 4),
                (Rendition::Lq, 200, 100)
            ]
        );
        assert!(
            out.iter()
                .all(|r| r.pixels.len() == (r.width * r.height * 4) as usize)
        );
    }

    #[test]
    fn downscaling_a_fine_checkerboard_averages_to_grey() {
        let mut backend = CpuBackend::new();
        let out = backend
            .render(&checkerboard(256, 256), &[spec(Rendition::Thumb, 8)])
            .unwrap();
        for p in out[0].pixels.chunks(4) {
            assert!(
                (110..=145).contains(&p[0]),
                "antialiased to mid grey, got {}",
                p[0]
            );
        }
    }

    #[test]
    fn transparent_pixels_do_not_darken_the_blur() {
        // Left half opaque red, right half fully transparent black.
        let (w, h) = (64u32, 64u32);
        let mut pixels = Vec::new();
        for _y in 0..h {
            for x in 0..w {
                pixels.extend_from_slice(if x < w / 2 {
                    &[255, 0, 0, 255]
                } else {
                    &[0, 0, 0, 0]
                });
            }
        }
        let source = SourceImage {
            width: w,
            height: h,
            pixels,
            has_alpha: true,
        };
        let out = CpuBackend::new()
            .render(&source, &[spec(Rendition::Blur, 64)])
            .unwrap();
        for p in out[0].pixels.chunks(4).filter(|p| p[3] > 8) {
            assert!(p[0] >= 240, "red stays red where visible, got {p:?}");
        }
    }

    #[test]
    fn one_pixel_image_survives_every_rendition() {
        let source = SourceImage {
            width: 1,
            height: 1,
            pixels: vec![1, 2, 3, 255],
            has_alpha: false,
        };
        let plan = [
            spec(Rendition::Thumb, 320),
            spec(Rendition::Blur, 64),
            spec(Rendition::Lq, 1280),
        ];
        let out = CpuBackend::new().render(&source, &plan).unwrap();
        assert!(out.iter().all(|r| (r.width, r.height) == (1, 1)));
        assert_eq!(out[0].pixels, vec![1, 2, 3, 255]);
    }
}
