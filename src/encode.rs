//! WebP encoding of rendered pixels, in the worker thread.
//!
//! Lossy WebP through libwebp at the rendition's quality. libwebp writes no alpha chunk when every
//! pixel is opaque, so opaque sources cost nothing extra for arriving as RGBA. Encoding is
//! deterministic: the same pixels and settings give the same bytes, which is what lets
//! `process` and the daemon be compared byte for byte.

use webp::{Encoder, PixelLayout, WebPConfig};

use crate::backend::RenderedImage;

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
    let mut config = WebPConfig::new().map_err(|()| fail("libwebp version mismatch".into()))?;
    config.quality = image.spec.quality;
    config.method = 4;
    config.alpha_quality = 100;
    let encoder = Encoder::new(&image.pixels, PixelLayout::Rgba, image.width, image.height);
    let memory = encoder
        .encode_advanced(&config)
        .map_err(|err| fail(format!("{err:?}")))?;
    Ok(memory.to_vec())
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
