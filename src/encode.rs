//! WebP encoding of rendered pixels, in the worker thread.
//!
//! Lossy WebP through libwebp (called directly) at the rendition's quality. libwebp writes no alpha chunk when every
//! pixel is opaque, so opaque sources cost nothing extra for arriving as RGBA. Encoding is
//! deterministic: the same pixels and settings give the same bytes, which is what lets
//! `process` and the daemon be compared byte for byte.

use std::ffi::c_void;
use std::mem::MaybeUninit;

use libwebp_sys::{
    WebPConfig, WebPEncode, WebPMemoryWrite, WebPMemoryWriter, WebPMemoryWriterClear,
    WebPMemoryWriterInit, WebPPicture, WebPPictureFree, WebPPictureImportRGBA, WebPValidateConfig,
};

use crate::backend::RenderedImage;
use crate::ops::{Rendition, RenditionSpec};

/// Why libwebp refused an image. Transient for the job: it means memory ran out or libwebp hit
/// an internal limit, neither of which is a property of the input alone.
#[derive(Debug, thiserror::Error)]
#[error("webp encoding of a {width}×{height} image failed: {reason}")]
pub struct EncodeError {
    pub width: u32,
    pub height: u32,
    pub reason: String,
}

/// Encodes one rendition.
pub fn encode_webp(image: &RenderedImage) -> Result<Vec<u8>, EncodeError> {
    let fail = |reason: String| EncodeError {
        width: image.width,
        height: image.height,
        reason,
    };
    let config = settings(&image.spec).map_err(fail)?;
    let mut picture = Picture::import(image).map_err(fail)?;
    picture.encode(&config).map_err(fail)
}

/// The encoder settings of a rendition. The method comes from the config (`*_method`); its
/// defaults were chosen by measurement on the benchmark corpus (`scripts/bench --variant`,
/// README "Performance"):
///
/// - lq at method 2, where libwebp makes no rate-distortion decisions: a third less CPU per
///   image than method 3 or 4. With libwebp's defaults its files were 7.5 % larger and its SSIM
///   lower; spatial noise shaping at 60 (default 50) and the strongest loop filter (100,
///   default 60) win back both: lq bytes +6 % and SSIM −0.0004 against method 3. These two
///   apply to lq at method 2 only: at 3 and 4 the same values cost 0.0014 of SSIM.
/// - thumb and blur at 4: thumb at 2 costs 2.7 % in bytes and SSIM, at 5 or 6 (trellis) it is
///   smaller but loses 0.0015 of SSIM; blur is too small for the method to matter.
///
/// libwebp's other defaults stay: 4 segments (1 segment is faster but 7 to 14 % larger), no
/// sharp YUV, no automatic filter choice (ten times the CPU), and `thread_level` 0, since a
/// second encoder thread would only move work to another core.
fn settings(spec: &RenditionSpec) -> Result<WebPConfig, String> {
    let mut config = WebPConfig::new().map_err(|()| "libwebp version mismatch".to_string())?;
    config.quality = spec.quality;
    config.alpha_quality = 100;
    config.method = i32::from(spec.method);
    if spec.rendition == Rendition::Lq && spec.method == 2 {
        config.sns_strength = 60;
        config.filter_strength = 100;
    }
    // SAFETY: `config` is an initialised configuration.
    if unsafe { WebPValidateConfig(&config) } == 0 {
        return Err("invalid encoder configuration".into());
    }
    Ok(config)
}

/// A libwebp picture holding one rendition's pixels as YUV 4:2:0 (plus alpha), freed on drop.
struct Picture(WebPPicture);

impl Picture {
    /// Converts RGBA8 straight into the YUV planes the lossy encoder reads. (Importing as ARGB,
    /// libwebp's default, copies the pixels once more and converts them inside the encoder with
    /// the same arithmetic, so the bytes written are the same either way.)
    fn import(image: &RenderedImage) -> Result<Picture, String> {
        let (width, height) = (image.width as usize, image.height as usize);
        assert_eq!(
            image.pixels.len(),
            width * height * 4,
            "RGBA8 of width × height"
        );
        let mut picture = Picture(WebPPicture::new().map_err(|()| "libwebp version mismatch")?);
        picture.0.use_argb = 0;
        picture.0.width = i32::try_from(width).map_err(|_| "width out of range")?;
        picture.0.height = i32::try_from(height).map_err(|_| "height out of range")?;
        let stride = picture.0.width * 4;
        // SAFETY: the buffer holds `height` rows of `stride` bytes, checked above; libwebp copies
        // out of it and keeps no pointer to it.
        let imported =
            unsafe { WebPPictureImportRGBA(&mut picture.0, image.pixels.as_ptr(), stride) };
        if imported == 0 {
            return Err(format!("import failed: {:?}", picture.0.error_code));
        }
        Ok(picture)
    }

    fn encode(&mut self, config: &WebPConfig) -> Result<Vec<u8>, String> {
        let mut writer = MaybeUninit::<WebPMemoryWriter>::uninit();
        // SAFETY: the writer is initialised before libwebp appends to it through `custom_ptr`,
        // and cleared (its buffer freed) after its bytes are copied out.
        unsafe {
            WebPMemoryWriterInit(writer.as_mut_ptr());
            self.0.writer = Some(WebPMemoryWrite);
            self.0.custom_ptr = writer.as_mut_ptr().cast::<c_void>();
            let ok = WebPEncode(config, &mut self.0);
            let writer = writer.assume_init_mut();
            let bytes = if writer.mem.is_null() {
                Vec::new()
            } else {
                std::slice::from_raw_parts(writer.mem, writer.size).to_vec()
            };
            WebPMemoryWriterClear(writer);
            self.0.custom_ptr = std::ptr::null_mut();
            if ok == 0 {
                return Err(format!("{:?}", self.0.error_code));
            }
            Ok(bytes)
        }
    }
}

impl Drop for Picture {
    fn drop(&mut self) {
        // SAFETY: the picture was initialised by WebPPicture::new; freeing an empty one is a no-op.
        unsafe { WebPPictureFree(&mut self.0) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(width: u32, height: u32, rgba: [u8; 4]) -> RenderedImage {
        RenderedImage {
            spec: RenditionSpec {
                rendition: Rendition::Thumb,
                size: 320,
                quality: 80.0,
                sigma: 0.0,
                method: 4,
            },
            width,
            height,
            pixels: rgba.repeat((width * height) as usize),
        }
    }

    #[test]
    fn output_is_webp_of_the_same_size() {
        let bytes = encode_webp(&rendered(17, 9, [200, 30, 40, 255])).unwrap();
        assert_eq!(&bytes[..4], b"RIFF");
        assert_eq!(&bytes[8..12], b"WEBP");
        let decoded = image::load_from_memory(&bytes).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (17, 9));
    }

    #[test]
    fn encoding_is_deterministic() {
        let image = rendered(40, 30, [10, 20, 30, 128]);
        assert_eq!(encode_webp(&image).unwrap(), encode_webp(&image).unwrap());
    }

    #[test]
    fn the_specs_method_reaches_the_encoder() {
        let mut image = rendered(96, 64, [0, 0, 0, 255]);
        let mut state = 1u32;
        for (i, v) in image.pixels.iter_mut().enumerate() {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            if i % 4 != 3 {
                *v = ((i / 4 % 96) as u32 * 2 + (state >> 28)) as u8;
            }
        }
        let sizes: Vec<usize> = [0, 6]
            .map(|method| {
                image.spec.method = method;
                encode_webp(&image).unwrap().len()
            })
            .into();
        // Method 0 makes no rate-distortion decisions; 6 searches hardest.
        assert!(sizes[1] < sizes[0], "method 0 and 6 gave {sizes:?} bytes");
    }

    #[test]
    fn lq_at_method_2_gets_its_measured_tuning_and_nothing_else_does() {
        let lq = crate::ops::default_plan()[2];
        assert_eq!((lq.rendition, lq.method), (Rendition::Lq, 2));
        let tuned = settings(&lq).unwrap();
        assert_eq!((tuned.sns_strength, tuned.filter_strength), (60, 100));
        let libwebp = WebPConfig::new().unwrap();
        for spec in [
            RenditionSpec { method: 3, ..lq },
            RenditionSpec {
                rendition: Rendition::Thumb,
                ..lq
            },
        ] {
            let config = settings(&spec).unwrap();
            assert_eq!(
                (config.sns_strength, config.filter_strength),
                (libwebp.sns_strength, libwebp.filter_strength),
                "{spec:?}"
            );
        }
    }

    #[test]
    fn alpha_survives_and_opaque_images_have_none() {
        let transparent =
            image::load_from_memory(&encode_webp(&rendered(8, 8, [9, 9, 9, 60])).unwrap()).unwrap();
        assert!(transparent.color().has_alpha());
        let opaque =
            image::load_from_memory(&encode_webp(&rendered(8, 8, [9, 9, 9, 255])).unwrap())
                .unwrap();
        assert!(!opaque.color().has_alpha());
    }
}
