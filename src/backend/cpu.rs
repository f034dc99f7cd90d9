//! The CPU backend: SIMD resampling with fast_image_resize, the reference for the GPU.
//!
//! # Filter chain
//!
//! Every rendition's size is [`ops::fit_within`] of the *source* size, whatever it is made from.
//! Renditions are made largest box first, and each one is resampled from a rendition already
//! made (blurred ones excepted) whose width and height are both at least [`CASCADE_FACTOR`]
//! times its own, or from the source when there is none: the smallest such for a sharp
//! rendition, the largest for a blurred one. With the defaults and a large photograph this is a
//! cascade:
//!
//! - lq: Lanczos3 from the source;
//! - thumb: Lanczos3 from lq (a 1280 box is 4× the 320 one);
//! - blur: area (box) reduction from lq, then the Gaussian of
//!   [`crate::ops::gaussian_blur_rgba`]. An area reduction averages every pixel of its input,
//!   so starting from lq rather than from the Lanczos-filtered thumb costs little (a box of
//!   20×20 pixels per output pixel) and keeps the placeholder closer to the source (SSIM
//!   0.97079 → 0.97120 on the benchmark corpus).
//!
//! An image that fits the lq box is its own lq; below 640 px its thumb comes from the source. A
//! Lanczos3 convolution widens with the ratio, so large reductions are antialiased; starting
//! from an intermediate at least twice as large keeps the first filter's softening well below
//! the second's. With alpha, resampling is done on premultiplied colour (fast_image_resize
//! multiplies and divides around the convolution) and the blur premultiplies explicitly, so
//! transparent pixels do not darken their neighbours.
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
        from: Pixels<'_>,
        width: u32,
        height: u32,
        filter: FilterType,
        has_alpha: bool,
    ) -> Result<Vec<u8>, BackendError> {
        if (width, height) == (from.width, from.height) {
            return Ok(from.pixels.to_vec());
        }
        let src = ImageRef::new(from.width, from.height, from.pixels, PixelType::U8x4).map_err(
            |err| BackendError::Job(format!("source buffer does not match its size: {err}")),
        )?;
        let mut dst = Image::new(width, height, PixelType::U8x4);
        let options = ResizeOptions::new()
            .resize_alg(ResizeAlg::Convolution(filter))
            .use_alpha(has_alpha);
        self.resizer
            .resize(&src, &mut dst, &options)
            .map_err(|err| {
                BackendError::Job(format!("resize to {width}×{height} failed: {err}"))
            })?;
        Ok(dst.into_vec())
    }

    /// Makes one rendition of `width`×`height` from `from`.
    fn make(
        &mut self,
        from: Pixels<'_>,
        spec: &RenditionSpec,
        (width, height): (u32, u32),
        has_alpha: bool,
    ) -> Result<RenderedImage, BackendError> {
        let pixels = if spec.rendition.is_blurred() {
            let mut pixels = self.resample(from, width, height, FilterType::Box, has_alpha)?;
            blur(&mut pixels, width, height, spec.sigma, has_alpha);
            pixels
        } else {
            self.resample(from, width, height, FilterType::Lanczos3, has_alpha)?
        };
        Ok(RenderedImage {
            spec: *spec,
            width,
            height,
            pixels,
        })
    }
}

/// How much larger, in each side, a rendition must be to serve as the starting point of a
/// smaller one (see the module documentation).
pub const CASCADE_FACTOR: u32 = 2;

/// RGBA8 pixels to resample from: the source or a rendition already made.
#[derive(Clone, Copy)]
struct Pixels<'a> {
    width: u32,
    height: u32,
    pixels: &'a [u8],
}

/// One step of the filter chain: make `plan[index]` at `size` from `plan[base]`, or from the
/// source when `base` is `None`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CascadeStep {
    pub index: usize,
    pub size: (u32, u32),
    pub base: Option<usize>,
}

/// The filter chain for an image of `source` size (its own size: a source decoded smaller, by
/// JPEG shrink-on-load, is still at least the largest rendition), in the order the steps must
/// run: largest box first (a stable sort keeps plan order among equal boxes), each rendition
/// from an unblurred one already made that is at least [`CASCADE_FACTOR`] times its size in
/// each side, else from the source: the smallest such for a sharp rendition, the largest for a
/// blurred one. Both backends follow it.
pub fn cascade(source: (u32, u32), plan: &[RenditionSpec]) -> Vec<CascadeStep> {
    let mut order: Vec<usize> = (0..plan.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(plan[i].size));
    let mut steps: Vec<CascadeStep> = Vec::with_capacity(plan.len());
    for index in order {
        let spec = &plan[index];
        let size = ops::fit_within(source.0, source.1, spec.size, spec.size);
        let bases = steps
            .iter()
            .filter(|made| !plan[made.index].rendition.is_blurred())
            .filter(|made| {
                made.size.0 >= size.0 * CASCADE_FACTOR && made.size.1 >= size.1 * CASCADE_FACTOR
            });
        let area = |made: &&CascadeStep| u64::from(made.size.0) * u64::from(made.size.1);
        let base = if spec.rendition.is_blurred() {
            bases.max_by_key(area)
        } else {
            bases.min_by_key(area)
        }
        .map(|made| made.index);
        steps.push(CascadeStep { index, size, base });
    }
    steps
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
        let mut made: Vec<Option<RenderedImage>> = vec![None; plan.len()];
        for step in cascade(source.full_size(), plan) {
            let from = match step.base {
                Some(base) => {
                    let base = made[base]
                        .as_ref()
                        .expect("a base is made before its users");
                    Pixels {
                        width: base.width,
                        height: base.height,
                        pixels: &base.pixels,
                    }
                }
                None => Pixels {
                    width: source.width,
                    height: source.height,
                    pixels: &source.pixels,
                },
            };
            let spec = &plan[step.index];
            made[step.index] = Some(self.make(from, spec, step.size, source.has_alpha)?);
        }
        Ok(made.into_iter().flatten().collect())
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
            method: 4,
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
        SourceImage::new(width, height, pixels, false)
    }

    fn photo_like(width: u32, height: u32) -> SourceImage {
        let mut pixels = Vec::new();
        for y in 0..height {
            for x in 0..width {
                let v = ((x * 7 + y * 13) % 256) as u8;
                pixels.extend_from_slice(&[v, 255 - v, (x % 256) as u8, 255]);
            }
        }
        SourceImage::new(width, height, pixels, false)
    }

    fn as_source(rendered: &RenderedImage) -> SourceImage {
        SourceImage::new(
            rendered.width,
            rendered.height,
            rendered.pixels.clone(),
            false,
        )
    }

    #[test]
    fn thumb_and_blur_are_resampled_from_the_larger_renditions() {
        let plan = [
            spec(Rendition::Thumb, 40),
            spec(Rendition::Blur, 8),
            spec(Rendition::Lq, 160),
        ];
        let out = CpuBackend::new()
            .render(&photo_like(640, 480), &plan)
            .unwrap();
        let (thumb, blur, lq) = (&out[0], &out[1], &out[2]);
        assert_eq!((lq.width, thumb.width, blur.width), (160, 40, 8));

        let from_lq = CpuBackend::new()
            .render(&as_source(lq), &[spec(Rendition::Thumb, 40)])
            .unwrap();
        assert_eq!(thumb.pixels, from_lq[0].pixels, "thumb is made from lq");
        // The placeholder's area reduction starts from the largest rendition, lq.
        let from_lq = CpuBackend::new()
            .render(&as_source(lq), &[spec(Rendition::Blur, 8)])
            .unwrap();
        assert_eq!(blur.pixels, from_lq[0].pixels, "blur is made from lq");
        let from_thumb = CpuBackend::new()
            .render(&as_source(thumb), &[spec(Rendition::Blur, 8)])
            .unwrap();
        assert_ne!(
            blur.pixels, from_thumb[0].pixels,
            "blur is not made from thumb"
        );
    }

    #[test]
    fn a_rendition_less_than_twice_as_large_is_not_a_starting_point() {
        // lq is the 120×90 source itself; thumb at 80 is not half of it, so it comes from the
        // source, exactly as when it is made alone.
        let source = photo_like(120, 90);
        let plan = [spec(Rendition::Thumb, 80), spec(Rendition::Lq, 100)];
        let out = CpuBackend::new().render(&source, &plan).unwrap();
        let alone = CpuBackend::new()
            .render(&source, &[spec(Rendition::Thumb, 80)])
            .unwrap();
        assert_eq!(out[0].pixels, alone[0].pixels);
        assert_eq!((out[1].width, out[1].height), (100, 75));
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
        let source = SourceImage::new(w, h, pixels, true);
        let out = CpuBackend::new()
            .render(&source, &[spec(Rendition::Blur, 64)])
            .unwrap();
        for p in out[0].pixels.chunks(4).filter(|p| p[3] > 8) {
            assert!(p[0] >= 240, "red stays red where visible, got {p:?}");
        }
    }

    #[test]
    fn one_pixel_image_survives_every_rendition() {
        let source = SourceImage::new(1, 1, vec![1, 2, 3, 255], false);
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
