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
use crate::ops::RenditionSpec;

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
/// defaults were chosen by measurement (`bench/webp_sweep.py` and `scripts/bench --variant`,
/// README "Performance"): lq at 3 makes the same bytes as 4 for less encoder time, thumb and
/// blur keep 4. libwebp's other defaults stay: 4 segments (1 segment is faster but 7 to 14 %
/// larger), no sharp YUV, and `thread_level` 0, since a second encoder thread would only move
/// work to another core.
fn settings(spec: &RenditionSpec) -> Result<WebPConfig, String> {
    let mut config = WebPConfig::new().map_err(|()| "libwebp version mismatch".to_string())?;
    config.quality = spec.quality;
    config.alpha_quality = 100;
    config.method = i32::from(spec.method);
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
    use crate::ops::{Rendition, RenditionSpec};

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
