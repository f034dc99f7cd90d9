//! Decoding: file bytes in, one upright sRGB RGBA8 image out.
//!
//! The format is recognised from the content, never from the file name. Dimensions are read from
//! the header and checked against [`DecodeLimits`] before any pixel is decoded; the decoders are
//! also given an allocation budget so that a header that lies is caught during decoding. EXIF
//! orientation is applied, animations give their first frame, and colour is converted to sRGB
//! (see [`crate::color`]).
//!
//! JPEG goes through zune-jpeg directly, because CMYK files need their raw ink values for the
//! ICC conversion; the other formats go through the `image` crate's decoders.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, RgbaImage};
use zune_jpeg::JpegDecoder;
use zune_jpeg::zune_core::bytestream::ZCursor;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;

use crate::color;
use crate::config::DecodeLimits;

/// A decoded image, upright and in sRGB.
#[derive(Clone, Debug)]
pub struct SourceImage {
    pub width: u32,
    pub height: u32,
    /// RGBA8, rows of `width * 4` bytes with no padding.
    pub pixels: Vec<u8>,
    /// Whether any pixel may be transparent (the file has an alpha channel).
    pub has_alpha: bool,
}

/// What the done message reports about the input.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceInfo {
    pub format: &'static str,
    /// Width and height as shown, after orientation.
    pub width: u32,
    pub height: u32,
    /// The EXIF orientation that was applied (1 = none).
    pub orientation: u8,
}

/// Why an input could not be decoded. Every variant is permanent: the same bytes fail the same
/// way on every attempt.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unsupported input: {0}")]
    Unsupported(String),
    #[error("corrupt {format}: {detail}")]
    Corrupt {
        format: &'static str,
        detail: String,
    },
    #[error("{0}")]
    TooLarge(String),
}

/// Decodes `bytes` within `limits`.
pub fn decode(
    bytes: &[u8],
    limits: &DecodeLimits,
) -> Result<(SourceImage, SourceInfo), DecodeError> {
    let format = recognise(bytes)?;
    let (image, orientation) = match format {
        ImageFormat::Jpeg => decode_jpeg(bytes, limits)?,
        _ => decode_with_image(bytes, format, limits)?,
    };
    let image = orient(image, orientation);
    let info = SourceInfo {
        format: format_name(format),
        width: image.width,
        height: image.height,
        orientation: orientation.to_exif(),
    };
    Ok((image, info))
}

fn recognise(bytes: &[u8]) -> Result<ImageFormat, DecodeError> {
    let format = image::guess_format(bytes).map_err(|_| {
        let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
        DecodeError::Unsupported(format!(
            "not a recognised image format (first bytes {})",
            if head.is_empty() {
                "none".to_string()
            } else {
                head.join(" ")
            }
        ))
    })?;
    match format {
        ImageFormat::Jpeg
        | ImageFormat::Png
        | ImageFormat::Gif
        | ImageFormat::WebP
        | ImageFormat::Bmp
        | ImageFormat::Tiff => Ok(format),
        other => Err(DecodeError::Unsupported(format!(
            "{} images are not decoded by this worker",
            other.extensions_str().first().unwrap_or(&"this kind of")
        ))),
    }
}

fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Jpeg => "jpeg",
        ImageFormat::Png => "png",
        ImageFormat::Gif => "gif",
        ImageFormat::WebP => "webp",
        ImageFormat::Bmp => "bmp",
        ImageFormat::Tiff => "tiff",
        _ => "unknown",
    }
}

/// Refuses dimensions above the limits, naming the limit and the value. `bytes_per_pixel` is
/// the decoder's working memory per pixel, for the memory budget.
fn check_dimensions(
    width: u32,
    height: u32,
    bytes_per_pixel: u64,
    limits: &DecodeLimits,
) -> Result<(), DecodeError> {
    if width == 0 || height == 0 {
        return Err(DecodeError::Unsupported(format!(
            "image has no pixels ({width}×{height})"
        )));
    }
    let side = width.max(height);
    if side > limits.max_side {
        return Err(DecodeError::TooLarge(format!(
            "image is {width}×{height}: a side of {side} px is above the max_side limit of {}",
            limits.max_side
        )));
    }
    let pixels = width as u64 * height as u64;
    if pixels > limits.max_pixels {
        return Err(DecodeError::TooLarge(format!(
            "image is {width}×{height} = {pixels} pixels, above the max_pixels limit of {}",
            limits.max_pixels
        )));
    }
    let needed = pixels * bytes_per_pixel;
    if needed > limits.max_decode_bytes {
        return Err(DecodeError::TooLarge(format!(
            "decoding {width}×{height} needs about {} MiB, above the max_decode_bytes limit of {} MiB",
            needed >> 20,
            limits.max_decode_bytes >> 20
        )));
    }
    Ok(())
}

fn decode_jpeg(
    bytes: &[u8],
    limits: &DecodeLimits,
) -> Result<(SourceImage, Orientation), DecodeError> {
    let corrupt = |err: zune_jpeg::errors::DecodeErrors| DecodeError::Corrupt {
        format: "jpeg",
        detail: err.to_string(),
    };
    // JPEG's own maximum; our tighter side limit is checked below with a clearer message.
    let options = DecoderOptions::default()
        .set_max_width(65_535)
        .set_max_height(65_535);

    let mut header = JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    header.decode_headers().map_err(corrupt)?;
    let info = header.info().expect("headers were decoded");
    let (width, height) = (info.width as u32, info.height as u32);
    // Output RGBA or CMYK plus the decoder's component planes.
    check_dimensions(width, height, 8, limits)?;
    let input_space = header.input_colorspace();
    let cmyk = matches!(input_space, Some(ColorSpace::CMYK | ColorSpace::YCCK));
    let icc = header.icc_profile();
    let orientation = header
        .exif()
        .and_then(|exif| Orientation::from_exif_chunk(exif))
        .unwrap_or(Orientation::NoTransforms);

    // Four-component files are taken raw (the decoder copies them unconverted) and turned into
    // ink amounts here; everything else comes out as RGBA.
    let out = match input_space {
        Some(ColorSpace::YCCK) => ColorSpace::YCCK,
        Some(ColorSpace::CMYK) => ColorSpace::CMYK,
        _ => ColorSpace::RGBA,
    };
    let mut decoder =
        JpegDecoder::new_with_options(ZCursor::new(bytes), options.jpeg_set_out_colorspace(out));
    let samples = decoder.decode().map_err(corrupt)?;
    let expected = width as usize * height as usize * 4;
    if samples.len() != expected {
        return Err(DecodeError::Corrupt {
            format: "jpeg",
            detail: format!(
                "decoder returned {} bytes for {width}×{height}",
                samples.len()
            ),
        });
    }

    let pixels = if cmyk {
        let mut inks = samples;
        if out == ColorSpace::YCCK {
            ycck_to_inks(&mut inks);
        } else if has_adobe_marker(bytes) {
            // Adobe's writers store CMYK inverted (255 = no ink).
            inks.iter_mut().for_each(|v| *v = 255 - *v);
        }
        color::cmyk_to_srgb_rgba(&inks, icc.as_deref())
    } else {
        let mut pixels = samples;
        if let Some(icc) = &icc {
            color::rgba_to_srgb(&mut pixels, icc);
        }
        pixels
    };
    Ok((
        SourceImage {
            width,
            height,
            pixels,
            has_alpha: false,
        },
        orientation,
    ))
}

/// Turns raw YCCK samples into CMYK ink amounts, in place.
///
/// Adobe's YCCK is the JFIF YCbCr transform applied to the inverted C, M and Y, with K stored
/// inverted beside them. Undoing the YCbCr transform therefore gives the inks of C, M and Y
/// directly, and K is inverted back.
fn ycck_to_inks(samples: &mut [u8]) {
    for p in samples.chunks_exact_mut(4) {
        let (y, cb, cr) = (p[0] as f32, p[1] as f32 - 128.0, p[2] as f32 - 128.0);
        let clamp = |v: f32| (v + 0.5).clamp(0.0, 255.0) as u8;
        p[0] = clamp(y + 1.402 * cr);
        p[1] = clamp(y - 0.344_136 * cb - 0.714_136 * cr);
        p[2] = clamp(y + 1.772 * cb);
        p[3] = 255 - p[3];
    }
}

/// Whether the JPEG has an Adobe APP14 segment before its first scan.
fn has_adobe_marker(bytes: &[u8]) -> bool {
    let mut at = 2; // after SOI
    while at + 4 <= bytes.len() && bytes[at] == 0xFF {
        let marker = bytes[at + 1];
        if marker == 0xDA {
            return false; // start of scan: no more header segments
        }
        let length = u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize;
        if marker == 0xEE && bytes.get(at + 4..at + 9) == Some(b"Adobe") {
            return true;
        }
        at += 2 + length;
    }
    false
}

fn decode_with_image(
    bytes: &[u8],
    format: ImageFormat,
    limits: &DecodeLimits,
) -> Result<(SourceImage, Orientation), DecodeError> {
    let name = format_name(format);
    let mut reader = image::ImageReader::with_format(Cursor::new(bytes), format);
    // Dimensions are checked by us, from the header, with a message naming our limit; the
    // allocation budget also binds the decoder's own buffers.
    let mut image_limits = image::Limits::default();
    image_limits.max_alloc = Some(limits.max_decode_bytes);
    reader.limits(image_limits);

    let mut decoder = reader
        .into_decoder()
        .map_err(|err| image_error(name, err))?;
    let (width, height) = decoder.dimensions();
    let bytes_per_pixel = decoder.color_type().bytes_per_pixel() as u64 + 4;
    check_dimensions(width, height, bytes_per_pixel, limits)?;
    let icc = decoder.icc_profile().ok().flatten();
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);

    let decoded = DynamicImage::from_decoder(decoder).map_err(|err| image_error(name, err))?;
    let has_alpha = decoded.color().has_alpha();
    let is_rgb = !matches!(decoded.color().channel_count(), 1 | 2);
    let mut pixels = decoded.into_rgba8().into_raw();
    if let (Some(icc), true) = (&icc, is_rgb) {
        color::rgba_to_srgb(&mut pixels, icc);
    }
    Ok((
        SourceImage {
            width,
            height,
            pixels,
            has_alpha,
        },
        orientation,
    ))
}

fn image_error(format: &'static str, err: ImageError) -> DecodeError {
    match err {
        ImageError::Limits(limit) => DecodeError::TooLarge(format!(
            "decoding this {format} exceeds a limit ({limit}); max_decode_bytes bounds it"
        )),
        ImageError::Unsupported(detail) => {
            DecodeError::Unsupported(format!("{format} feature not supported: {detail}"))
        }
        other => DecodeError::Corrupt {
            format,
            detail: other.to_string(),
        },
    }
}

fn orient(image: SourceImage, orientation: Orientation) -> SourceImage {
    if orientation == Orientation::NoTransforms {
        return image;
    }
    let SourceImage {
        width,
        height,
        pixels,
        has_alpha,
    } = image;
    let buffer = RgbaImage::from_raw(width, height, pixels).expect("buffer matches its size");
    let mut dynamic = DynamicImage::ImageRgba8(buffer);
    dynamic.apply_orientation(orientation);
    let rotated = dynamic.into_rgba8();
    SourceImage {
        width: rotated.width(),
        height: rotated.height(),
        pixels: rotated.into_raw(),
        has_alpha,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::ImageEncoder;

    fn png(width: u32, height: u32, rgba: [u8; 4]) -> Vec<u8> {
        let pixels = rgba.repeat((width * height) as usize);
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(&pixels, width, height, image::ExtendedColorType::Rgba8)
            .unwrap();
        out
    }

    #[test]
    fn png_with_alpha_keeps_alpha() {
        let (image, info) = decode(&png(3, 2, [1, 2, 3, 100]), &DecodeLimits::default()).unwrap();
        assert_eq!((image.width, image.height, image.has_alpha), (3, 2, true));
        assert_eq!(&image.pixels[..4], &[1, 2, 3, 100]);
        assert_eq!(info.format, "png");
    }

    #[test]
    fn text_is_unsupported_whatever_its_name() {
        let err = decode(b"hello, this is text", &DecodeLimits::default()).unwrap_err();
        assert!(matches!(err, DecodeError::Unsupported(_)), "{err}");
    }

    #[test]
    fn oversized_dimensions_are_refused_before_decoding() {
        let limits = DecodeLimits {
            max_pixels: 5,
            ..DecodeLimits::default()
        };
        let err = decode(&png(3, 2, [0; 4]), &limits).unwrap_err();
        assert!(matches!(err, DecodeError::TooLarge(_)));
        assert!(err.to_string().contains("max_pixels limit of 5"), "{err}");
        let limits = DecodeLimits {
            max_side: 2,
            ..DecodeLimits::default()
        };
        assert!(
            decode(&png(3, 2, [0; 4]), &limits)
                .unwrap_err()
                .to_string()
                .contains("max_side")
        );
    }

    #[test]
    fn animated_gif_gives_its_first_frame() {
        use image::codecs::gif::GifEncoder;
        use image::{Delay, Frame, Rgba};
        let mut bytes = Vec::new();
        {
            let mut encoder = GifEncoder::new(&mut bytes);
            for colour in [[255, 0, 0, 255], [0, 0, 255, 255]] {
                let buffer = RgbaImage::from_pixel(4, 4, Rgba(colour));
                let frame = Frame::from_parts(buffer, 0, 0, Delay::from_numer_denom_ms(10, 1));
                encoder.encode_frame(frame).unwrap();
            }
        }
        let (image, info) = decode(&bytes, &DecodeLimits::default()).unwrap();
        assert_eq!(info.format, "gif");
        assert_eq!(
            &image.pixels[..4],
            &[255, 0, 0, 255],
            "the first frame is red"
        );
    }

    #[test]
    fn truncated_png_is_corrupt() {
        let bytes = png(64, 64, [9; 4]);
        let err = decode(&bytes[..bytes.len() / 2], &DecodeLimits::default()).unwrap_err();
        assert!(matches!(err, DecodeError::Corrupt { .. }), "{err}");
    }
}
