//! Decoding: file bytes in, one upright sRGB RGBA8 image out, or a permanent [`DecodeError`].
//!
//! The format is recognised from the content, never from the file name. Every input is treated
//! as hostile:
//!
//! - Limits are checked from the header before any pixel is decoded: for PNG, GIF and WebP the
//!   declared dimensions are read from the raw bytes before a decoder is even built, for JPEG,
//!   BMP and TIFF from the decoder's header pass. They are enforced again during decoding: each
//!   Rust decoder gets [`DecodeLimits::max_decode_bytes`] as its allocation budget, so a header
//!   that lies is caught when the decoder allocates. libjpeg allocates only from the frame
//!   header's size, which was checked, and is held to 500 scans for a progressive file.
//! - ICC profiles and EXIF blocks above [`DecodeLimits::max_metadata_bytes`] are refused. A PNG
//!   `iCCP` chunk is inflated here, bounded by that limit, before the PNG decoder sees it, so a
//!   profile that inflates to gigabytes is refused after inflating at most the limit. PNG text
//!   and metadata chunks together are held to the same limit; compressed text is never inflated.
//! - Animations give their first frame; later frames are never decoded (GIF frames after the
//!   first are not even read).
//! - A JPEG whose scan data is not closed by an end-of-image marker, as in a truncated file, is
//!   refused as corrupt rather than passed on with the missing part filled in grey.
//! - A panic inside a third-party decoder is caught and reported as corrupt input, so that the
//!   job fails once instead of being retried.
//!
//! Each refusal names the limit and the value that broke it. EXIF orientation is applied and
//! colour is converted to sRGB (see [`crate::color`]).
//!
//! JPEG is decoded by libjpeg-turbo, which can scale while decoding, with raw ink values for
//! CMYK files so that their ICC conversion is ours (see [`jpeg`]); GIF goes through the gif
//! crate directly, because the image crate's GIF decoder keeps the gif crate's own 50 MB frame
//! limit instead of our budget. The other formats go through the `image` crate's decoders.
//!
//! # Limitations
//!
//! A JPEG whose scans are complete but which lacks only its end-of-image marker is refused as
//! truncated too: its bytes cannot be told apart from a file cut at a block boundary. libjpeg
//! warns about such files; browsers show them.

use std::any::Any;
use std::io::Cursor;
use std::num::NonZeroU64;
use std::panic::{self, AssertUnwindSafe};

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, RgbaImage};

use crate::color;
use crate::config::DecodeLimits;

mod jpeg;

/// A decoded image, upright and in sRGB.
#[derive(Clone, Debug)]
pub struct SourceImage {
    pub width: u32,
    pub height: u32,
    /// RGBA8, rows of `width * 4` bytes with no padding.
    pub pixels: Vec<u8>,
    /// Whether any pixel may be transparent (the file has an alpha channel).
    pub has_alpha: bool,
    /// The image's own size, which renditions are planned from. Larger than `width` ×
    /// `height` when the decoder scaled while decoding (JPEG shrink-on-load).
    pub full_width: u32,
    pub full_height: u32,
}

impl SourceImage {
    /// An image decoded at its own size.
    pub fn new(width: u32, height: u32, pixels: Vec<u8>, has_alpha: bool) -> SourceImage {
        SourceImage {
            width,
            height,
            pixels,
            has_alpha,
            full_width: width,
            full_height: height,
        }
    }

    /// The image's own size, which renditions are planned from.
    pub fn full_size(&self) -> (u32, u32) {
        (self.full_width, self.full_height)
    }
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

/// Decodes `bytes` within `limits`, at full size.
pub fn decode(
    bytes: &[u8],
    limits: &DecodeLimits,
) -> Result<(SourceImage, SourceInfo), DecodeError> {
    decode_at_least(bytes, limits, &|width, height| (width, height))
}

/// Decodes `bytes` within `limits`, possibly at a reduced size that is still at least
/// `need(width, height)` on both sides, where `width` × `height` is the image's upright size
/// and the answer is upright too. Only JPEG scales while decoding; every other format comes
/// out at full size. [`SourceInfo`] and [`SourceImage::full_size`] give the full size either
/// way.
pub fn decode_at_least(
    bytes: &[u8],
    limits: &DecodeLimits,
    need: &dyn Fn(u32, u32) -> (u32, u32),
) -> Result<(SourceImage, SourceInfo), DecodeError> {
    let format = recognise(bytes)?;
    check_header(bytes, format, limits)?;

    let name = format_name(format);
    let (image, orientation) = guarded(name, || match format {
        ImageFormat::Jpeg => jpeg::decode_jpeg(bytes, limits, need),
        ImageFormat::Gif => decode_gif(bytes, limits),
        _ => decode_with_image(bytes, format, limits),
    })?;

    let image = orient(image, orientation);
    let info = SourceInfo {
        format: name,
        width: image.full_width,
        height: image.full_height,
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

// ---- limits ----

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

/// [`check_dimensions`] for sizes read from raw header bytes. A zero side is left for the
/// decoder to report, because it knows whether the file is corrupt or merely empty.
fn check_declared(
    width: u32,
    height: u32,
    bytes_per_pixel: u64,
    limits: &DecodeLimits,
) -> Result<(), DecodeError> {
    if width == 0 || height == 0 {
        return Ok(());
    }
    check_dimensions(width, height, bytes_per_pixel, limits)
}

/// Refuses an ICC profile or EXIF block (`what`) of `len` bytes above the metadata limit.
fn check_metadata(
    format: &str,
    what: &str,
    len: usize,
    limits: &DecodeLimits,
) -> Result<(), DecodeError> {
    if len as u64 > limits.max_metadata_bytes {
        return Err(DecodeError::TooLarge(format!(
            "{format} {what} is {len} bytes, above the max_metadata_bytes limit of {}",
            limits.max_metadata_bytes
        )));
    }
    Ok(())
}

// ---- header checks on the raw bytes ----

/// RGBA canvas of the logical screen plus, at most, an RGBA frame of the same size.
const GIF_BYTES_PER_PIXEL: u64 = 8;

/// Decoder output (RGBA8 at most) plus the RGBA8 copy made from it.
const WEBP_BYTES_PER_PIXEL: u64 = 8;

/// Checks what the raw header declares, before any decoder is built. JPEG needs no such pass
/// (zune-jpeg's header pass reads segments only), nor BMP and TIFF (the image crate's decoders
/// read only their header and directory before [`decode_with_image`] checks the dimensions).
fn check_header(
    bytes: &[u8],
    format: ImageFormat,
    limits: &DecodeLimits,
) -> Result<(), DecodeError> {
    match format {
        ImageFormat::Png => check_png_chunks(bytes, limits),
        ImageFormat::Gif => match (le_u16(bytes, 6), le_u16(bytes, 8)) {
            (Some(width), Some(height)) => {
                check_declared(width.into(), height.into(), GIF_BYTES_PER_PIXEL, limits)
            }
            _ => Ok(()),
        },
        ImageFormat::WebP => webp_canvas(bytes).map_or(Ok(()), |(width, height)| {
            check_declared(width, height, WEBP_BYTES_PER_PIXEL, limits)
        }),
        _ => Ok(()),
    }
}

fn le_u16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn le_u24(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at + 3)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], 0]))
}

fn le_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn be_u16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn be_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// The canvas a WebP file declares in its first chunk. Read here rather than from the decoder
/// because the decoder wraps a 16384-wide lossless header round to zero.
fn webp_canvas(bytes: &[u8]) -> Option<(u32, u32)> {
    let payload = bytes.get(20..)?;
    match bytes.get(12..16)? {
        // Frame tag (3 bytes), start code (3 bytes), then 14-bit width and height.
        b"VP8 " => Some((
            u32::from(le_u16(payload, 6)? & 0x3fff),
            u32::from(le_u16(payload, 8)? & 0x3fff),
        )),
        // Signature byte, then 14 bits of width - 1 and 14 bits of height - 1.
        b"VP8L" if payload.first() == Some(&0x2f) => {
            let bits = le_u32(payload, 1)?;
            Some(((bits & 0x3fff) + 1, ((bits >> 14) & 0x3fff) + 1))
        }
        // Flags and reserved bytes, then 24 bits each of canvas width - 1 and height - 1.
        b"VP8X" => Some((le_u24(payload, 4)? + 1, le_u24(payload, 7)? + 1)),
        _ => None,
    }
}

/// One chunk of a PNG file.
struct PngChunk<'a> {
    kind: [u8; 4],
    data: &'a [u8],
    crc: Option<u32>,
}

impl PngChunk<'_> {
    fn crc_matches(&self) -> bool {
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&self.kind);
        hasher.update(self.data);
        self.crc == Some(hasher.finalize())
    }
}

/// The chunks of a PNG file in order, up to IEND or to the first chunk that runs past the end of
/// the file (the decoder reports that one).
fn png_chunks(bytes: &[u8]) -> impl Iterator<Item = PngChunk<'_>> {
    let mut rest = bytes.get(8..).unwrap_or_default();
    let mut ended = false;
    std::iter::from_fn(move || {
        if ended {
            return None;
        }
        let length = be_u32(rest, 0)? as usize;
        let kind: [u8; 4] = rest.get(4..8)?.try_into().ok()?;
        let data = rest.get(8..8usize.checked_add(length)?)?;
        let crc = be_u32(rest, 8 + length);
        rest = rest.get(12 + length..).unwrap_or_default();
        ended = &kind == b"IEND";
        Some(PngChunk { kind, data, crc })
    })
}

/// Checks IHDR against the dimension limits, the ICC profile and the sum of the metadata chunks
/// against the metadata limit, all before the PNG decoder reads anything. The decoder would
/// otherwise inflate an `iCCP` chunk up to the whole decode budget while reading the header.
fn check_png_chunks(bytes: &[u8], limits: &DecodeLimits) -> Result<(), DecodeError> {
    let mut metadata_bytes = 0u64;
    for chunk in png_chunks(bytes) {
        match &chunk.kind {
            // A damaged header's sizes mean nothing: the decoder reports it as corrupt.
            b"IHDR" if chunk.data.len() == 13 && chunk.crc_matches() => {
                check_png_ihdr(chunk.data, limits)?
            }
            b"iCCP" => check_png_icc(chunk.data, limits)?,
            _ => {}
        }
        if matches!(&chunk.kind, b"iCCP" | b"eXIf" | b"tEXt" | b"zTXt" | b"iTXt") {
            metadata_bytes += chunk.data.len() as u64;
            if metadata_bytes > limits.max_metadata_bytes {
                return Err(DecodeError::TooLarge(format!(
                    "png metadata chunks (icc, exif, text) hold {metadata_bytes} bytes or more, \
                     above the max_metadata_bytes limit of {}",
                    limits.max_metadata_bytes
                )));
            }
        }
    }
    Ok(())
}

fn check_png_ihdr(ihdr: &[u8], limits: &DecodeLimits) -> Result<(), DecodeError> {
    let (Some(width), Some(height), Some(&depth), Some(&colour)) =
        (be_u32(ihdr, 0), be_u32(ihdr, 4), ihdr.get(8), ihdr.get(9))
    else {
        return Ok(());
    };
    check_declared(width, height, png_bytes_per_pixel(colour, depth), limits)
}

/// The decoder's samples per pixel (palettes expand to RGBA at most, 16-bit samples stay 16-bit)
/// plus the RGBA8 copy made from them.
fn png_bytes_per_pixel(colour_type: u8, bit_depth: u8) -> u64 {
    let channels = match colour_type {
        0 => 1,
        4 => 2,
        2 => 3,
        _ => 4,
    };
    let sample_bytes = if bit_depth == 16 { 2 } else { 1 };
    channels * sample_bytes + 4
}

/// Inflates an `iCCP` chunk's profile, stopping one byte past the metadata limit. A chunk that
/// cannot be parsed or inflated is let through: the PNG decoder drops such a profile.
fn check_png_icc(chunk: &[u8], limits: &DecodeLimits) -> Result<(), DecodeError> {
    // Keyword of 1 to 79 bytes, NUL, compression method (0 = zlib), zlib stream.
    let Some(nul) = chunk.iter().take(80).position(|&b| b == 0) else {
        return Ok(());
    };
    let Some(stream) = chunk.get(nul + 2..) else {
        return Ok(());
    };
    let limit = usize::try_from(limits.max_metadata_bytes).unwrap_or(usize::MAX);
    let inflated = match fdeflate::decompress_to_vec_bounded(stream, limit.saturating_add(1)) {
        Ok(profile) => profile.len(),
        Err(fdeflate::BoundedDecompressionError::OutputTooLarge { partial_output }) => {
            partial_output.len()
        }
        Err(fdeflate::BoundedDecompressionError::DecompressionError { .. }) => return Ok(()),
    };
    if inflated > limit {
        return Err(DecodeError::TooLarge(format!(
            "png icc profile inflates to more than the max_metadata_bytes limit of {limit} bytes \
             (inflating stopped at {inflated})"
        )));
    }
    Ok(())
}

// ---- decoder panics and error text ----

/// Runs a third-party decoder, turning a panic into a corrupt-input failure. A decoder that
/// panics on some bytes panics on them every time, so retrying would only repeat it.
fn guarded<T>(
    format: &'static str,
    decode: impl FnOnce() -> Result<T, DecodeError>,
) -> Result<T, DecodeError> {
    panic::catch_unwind(AssertUnwindSafe(decode)).unwrap_or_else(|payload| {
        Err(DecodeError::Corrupt {
            format,
            detail: format!(
                "the decoder panicked on this input ({})",
                panic_message(payload.as_ref())
            ),
        })
    })
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

/// A decoder's error text as one line: some end theirs with a newline or wrap it in quotes.
fn tidy(detail: impl ToString) -> String {
    let text = detail.to_string().replace(['\n', '\r'], " ");
    text.trim().trim_matches('"').trim().to_string()
}

fn corrupt(format: &'static str, detail: impl ToString) -> DecodeError {
    DecodeError::Corrupt {
        format,
        detail: tidy(detail),
    }
}

// ---- GIF ----

fn decode_gif(
    bytes: &[u8],
    limits: &DecodeLimits,
) -> Result<(SourceImage, Orientation), DecodeError> {
    let mut options = gif::DecodeOptions::new();
    options.set_color_output(gif::ColorOutput::RGBA);
    // Without this the gif crate applies its own 50 MB per frame, which is not our budget.
    options.set_memory_limit(
        NonZeroU64::new(limits.max_decode_bytes)
            .map_or(gif::MemoryLimit::Unlimited, gif::MemoryLimit::Bytes),
    );
    let mut decoder = options
        .read_info(Cursor::new(bytes))
        .map_err(|err| gif_error(err, limits))?;
    let (width, height) = (u32::from(decoder.width()), u32::from(decoder.height()));
    check_dimensions(width, height, GIF_BYTES_PER_PIXEL, limits)?;
    let icc = decoder.icc_profile().map(<[u8]>::to_vec);
    check_metadata(
        "gif",
        "icc profile",
        icc.as_ref().map_or(0, Vec::len),
        limits,
    )?;

    let mut pixels = first_gif_frame(&mut decoder, width, height, limits)?;
    if let Some(icc) = &icc {
        color::rgba_to_srgb(&mut pixels, icc);
    }
    Ok((
        // GIF transparency is per frame and per palette entry: assume it may be used.
        SourceImage::new(width, height, pixels, true),
        Orientation::NoTransforms,
    ))
}

/// Decodes the first frame onto a transparent canvas the size of the logical screen. The frames
/// after it are never read, so their number and content cost nothing.
fn first_gif_frame(
    decoder: &mut gif::Decoder<Cursor<&[u8]>>,
    width: u32,
    height: u32,
    limits: &DecodeLimits,
) -> Result<Vec<u8>, DecodeError> {
    let frame = decoder
        .next_frame_info()
        .map_err(|err| gif_error(err, limits))?
        .ok_or_else(|| corrupt("gif", "the file has no image data"))?;
    let (left, top) = (usize::from(frame.left), usize::from(frame.top));
    let (frame_width, frame_height) = (u64::from(frame.width), u64::from(frame.height));

    // A frame may be larger than the screen; only the part on the screen is kept, but the
    // decoder needs room for all of it.
    let canvas_bytes = u64::from(width) * u64::from(height) * 4;
    let needed = canvas_bytes + frame_width * frame_height * 4;
    if needed > limits.max_decode_bytes {
        return Err(DecodeError::TooLarge(format!(
            "gif first frame is {frame_width}×{frame_height} on a {width}×{height} screen: \
             decoding it needs {needed} bytes, above the max_decode_bytes limit of {}",
            limits.max_decode_bytes
        )));
    }
    let mut frame_pixels = vec![0; decoder.buffer_size()];
    decoder
        .read_into_buffer(&mut frame_pixels)
        .map_err(|err| gif_error(err, limits))?;

    let mut canvas = vec![0; canvas_bytes as usize];
    paste_frame(
        &mut canvas,
        width as usize,
        &frame_pixels,
        (left, top),
        frame_width as usize,
    );
    Ok(canvas)
}

/// Copies an RGBA frame `frame_width` pixels wide into the RGBA canvas at `(left, top)`,
/// dropping what falls outside the canvas.
fn paste_frame(
    canvas: &mut [u8],
    canvas_width: usize,
    frame: &[u8],
    (left, top): (usize, usize),
    frame_width: usize,
) {
    let visible = frame_width.min(canvas_width.saturating_sub(left));
    if visible == 0 {
        return;
    }
    let canvas_height = canvas.len() / (canvas_width * 4);
    for (y, row) in frame.chunks_exact(frame_width * 4).enumerate() {
        let canvas_y = top + y;
        if canvas_y >= canvas_height {
            break;
        }
        let start = (canvas_y * canvas_width + left) * 4;
        canvas[start..start + visible * 4].copy_from_slice(&row[..visible * 4]);
    }
}

fn gif_error(err: gif::DecodingError, limits: &DecodeLimits) -> DecodeError {
    match err {
        gif::DecodingError::MemoryLimit | gif::DecodingError::OutOfMemory => {
            DecodeError::TooLarge(format!(
                "decoding this gif needs more than the max_decode_bytes limit of {} bytes",
                limits.max_decode_bytes
            ))
        }
        other => corrupt("gif", other),
    }
}

// ---- the image crate's decoders ----

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
        .map_err(|err| image_error(name, err, limits))?;
    let (width, height) = decoder.dimensions();
    let bytes_per_pixel = decoder.color_type().bytes_per_pixel() as u64 + 4;
    check_dimensions(width, height, bytes_per_pixel, limits)?;
    let icc = decoder.icc_profile().ok().flatten();
    check_metadata(
        name,
        "icc profile",
        icc.as_ref().map_or(0, Vec::len),
        limits,
    )?;
    let exif = decoder.exif_metadata().ok().flatten();
    check_metadata(
        name,
        "exif block",
        exif.as_ref().map_or(0, Vec::len),
        limits,
    )?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);

    let decoded =
        DynamicImage::from_decoder(decoder).map_err(|err| image_error(name, err, limits))?;
    let has_alpha = decoded.color().has_alpha();
    let is_rgb = !matches!(decoded.color().channel_count(), 1 | 2);
    let mut pixels = decoded.into_rgba8().into_raw();
    if let (Some(icc), true) = (&icc, is_rgb) {
        color::rgba_to_srgb(&mut pixels, icc);
    }
    Ok((
        SourceImage::new(width, height, pixels, has_alpha),
        orientation,
    ))
}

fn image_error(format: &'static str, err: ImageError, limits: &DecodeLimits) -> DecodeError {
    match err {
        ImageError::Limits(limit) => DecodeError::TooLarge(format!(
            "decoding this {format} needs more than the max_decode_bytes limit of {} bytes ({})",
            limits.max_decode_bytes,
            tidy(limit)
        )),
        ImageError::Unsupported(detail) => {
            DecodeError::Unsupported(format!("{format} feature not supported: {detail}"))
        }
        other => corrupt(format, other),
    }
}

/// Whether `orientation` turns the image a quarter, swapping its width and height.
fn turns(orientation: Orientation) -> bool {
    matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
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
        full_width,
        full_height,
    } = image;
    let buffer = RgbaImage::from_raw(width, height, pixels).expect("buffer matches its size");
    let mut dynamic = DynamicImage::ImageRgba8(buffer);
    dynamic.apply_orientation(orientation);
    let rotated = dynamic.into_rgba8();
    let (full_width, full_height) = if turns(orientation) {
        (full_height, full_width)
    } else {
        (full_width, full_height)
    };
    SourceImage {
        width: rotated.width(),
        height: rotated.height(),
        pixels: rotated.into_raw(),
        has_alpha,
        full_width,
        full_height,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::ImageEncoder;
    use std::borrow::Cow;

    const PNG_SIGNATURE: [u8; 8] = [137, 80, 78, 71, 13, 10, 26, 10];

    fn png(width: u32, height: u32, rgba: [u8; 4]) -> Vec<u8> {
        let pixels = rgba.repeat((width * height) as usize);
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(&pixels, width, height, image::ExtendedColorType::Rgba8)
            .unwrap();
        out
    }

    fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut chunk = (data.len() as u32).to_be_bytes().to_vec();
        chunk.extend_from_slice(kind);
        chunk.extend_from_slice(data);
        let crc = crc32fast::hash(&chunk[4..]);
        chunk.extend_from_slice(&crc.to_be_bytes());
        chunk
    }

    /// `png` with `chunks` inserted right after its IHDR chunk.
    fn insert_after_ihdr(png: &[u8], chunks: &[Vec<u8>]) -> Vec<u8> {
        let split = PNG_SIGNATURE.len() + 12 + 13;
        assert_eq!(&png[12..16], b"IHDR");
        [&png[..split], &chunks.concat(), &png[split..]].concat()
    }

    fn metadata_limit(bytes: u64) -> DecodeLimits {
        DecodeLimits {
            max_metadata_bytes: bytes,
            ..DecodeLimits::default()
        }
    }

    fn jpeg(width: u32, height: u32) -> Vec<u8> {
        let pixels: Vec<u8> = (0..width * height * 3).map(|i| (i % 251) as u8).collect();
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .write_image(&pixels, width, height, image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    fn progressive_jpeg(width: u16, height: u16) -> Vec<u8> {
        let pixels: Vec<u8> = (0..width as u32 * height as u32 * 3)
            .map(|i| (i % 251) as u8)
            .collect();
        let mut out = Vec::new();
        let mut encoder = jpeg_encoder::Encoder::new(&mut out, 90);
        encoder.set_progressive(true);
        encoder
            .encode(&pixels, width, height, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        out
    }

    /// A GIF whose global palette is red (0) and blue (1) and whose first frame, `first` pixels
    /// of red at the top left, is followed by the raw blocks `after_first`.
    fn gif_with(screen: (u16, u16), first: (u16, u16), after_first: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder =
            gif::Encoder::new(&mut out, screen.0, screen.1, &[255, 0, 0, 0, 0, 255]).unwrap();
        let frame = gif::Frame {
            width: first.0,
            height: first.1,
            buffer: Cow::Owned(vec![0; first.0 as usize * first.1 as usize]),
            ..gif::Frame::default()
        };
        encoder.write_frame(&frame).unwrap();
        drop(encoder);
        assert_eq!(out.pop(), Some(0x3B), "the encoder ends with the trailer");
        out.extend_from_slice(after_first);
        out.push(0x3B);
        out
    }

    /// A 1×1 frame at the top left whose LZW data is `lzw` (two-bit minimum code size).
    fn one_pixel_gif_frame(lzw: [u8; 2]) -> Vec<u8> {
        let mut block = vec![0x2C, 0, 0, 0, 0, 1, 0, 1, 0, 0];
        block.extend_from_slice(&[2, 2, lzw[0], lzw[1], 0]);
        block
    }

    /// A RIFF WebP of the given chunks.
    fn webp(chunks: &[u8]) -> Vec<u8> {
        let mut out = b"RIFF".to_vec();
        out.extend_from_slice(&(4 + chunks.len() as u32).to_le_bytes());
        out.extend_from_slice(b"WEBP");
        out.extend_from_slice(chunks);
        out
    }

    fn webp_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut chunk = kind.to_vec();
        chunk.extend_from_slice(&(data.len() as u32).to_le_bytes());
        chunk.extend_from_slice(data);
        if data.len() % 2 == 1 {
            chunk.push(0);
        }
        chunk
    }

    fn assert_too_large(err: &DecodeError, wanted: &str) {
        assert!(matches!(err, DecodeError::TooLarge(_)), "{err}");
        assert!(err.to_string().contains(wanted), "{err}");
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
        assert_too_large(&err, "max_pixels limit of 5");
        let limits = DecodeLimits {
            max_side: 2,
            ..DecodeLimits::default()
        };
        let err = decode(&png(3, 2, [0; 4]), &limits).unwrap_err();
        assert_too_large(&err, "max_side");
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

    #[test]
    fn png_dimensions_are_refused_from_ihdr_before_the_decoder_reads_on() {
        // No image data at all: only a check of the header can call this too large rather
        // than corrupt.
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&20_000u32.to_be_bytes());
        ihdr.extend_from_slice(&20_000u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
        let bytes = [
            PNG_SIGNATURE.to_vec(),
            png_chunk(b"IHDR", &ihdr),
            png_chunk(b"IEND", &[]),
        ]
        .concat();
        let err = decode(&bytes, &DecodeLimits::default()).unwrap_err();
        assert_too_large(&err, "400000000 pixels, above the max_pixels limit");
    }

    #[test]
    fn png_header_failing_its_crc_is_corrupt_whatever_size_it_claims() {
        let mut bytes = png(2, 2, [0; 4]);
        bytes[16..24].copy_from_slice(&[0, 1, 0, 0, 0, 1, 0, 0]); // 65536×65536, CRC unchanged
        let err = decode(&bytes, &DecodeLimits::default()).unwrap_err();
        assert!(
            matches!(err, DecodeError::Corrupt { format: "png", .. }),
            "{err}"
        );
    }

    #[test]
    fn png_icc_profile_inflating_past_the_metadata_limit_is_refused() {
        // One MiB of zeros compresses to about a kilobyte: the chunk is small, the profile not.
        let mut iccp = b"bomb\0\0".to_vec();
        iccp.extend(fdeflate::compress_to_vec(&vec![0u8; 1 << 20]));
        assert!(iccp.len() < 8 << 10);
        let bytes = insert_after_ihdr(&png(2, 2, [0; 4]), &[png_chunk(b"iCCP", &iccp)]);
        let err = decode(&bytes, &metadata_limit(64 << 10)).unwrap_err();
        assert_too_large(&err, "icc profile inflates to more than");
        assert_too_large(&err, "max_metadata_bytes limit of 65536");
    }

    #[test]
    fn png_icc_profile_at_the_metadata_limit_is_kept() {
        let icc = moxcms::ColorProfile::new_srgb().encode().unwrap();
        let pixels = [10u8, 20, 30, 255].repeat(4);
        let mut bytes = Vec::new();
        let mut encoder = image::codecs::png::PngEncoder::new(&mut bytes);
        encoder.set_icc_profile(icc.clone()).unwrap();
        encoder
            .write_image(&pixels, 2, 2, image::ExtendedColorType::Rgba8)
            .unwrap();

        decode(&bytes, &metadata_limit(icc.len() as u64)).unwrap();
        let err = decode(&bytes, &metadata_limit(icc.len() as u64 - 1)).unwrap_err();
        assert_too_large(&err, "max_metadata_bytes");
    }

    #[test]
    fn png_text_chunks_past_the_metadata_limit_are_refused() {
        let text = png_chunk(b"tEXt", &[&b"Comment\0"[..], &[b'x'; 600]].concat());
        let bytes = insert_after_ihdr(&png(2, 2, [0; 4]), &[text.clone(), text]);
        let err = decode(&bytes, &metadata_limit(1000)).unwrap_err();
        assert_too_large(&err, "1216 bytes or more");
        assert_too_large(&err, "max_metadata_bytes limit of 1000");
        decode(&bytes, &metadata_limit(2000)).unwrap();
    }

    #[test]
    fn jpeg_icc_profile_above_the_metadata_limit_is_refused() {
        let pixels = [90u8; 16 * 16 * 3];
        let mut bytes = Vec::new();
        let mut encoder = image::codecs::jpeg::JpegEncoder::new(&mut bytes);
        encoder.set_icc_profile(vec![7; 5000]).unwrap();
        encoder
            .write_image(&pixels, 16, 16, image::ExtendedColorType::Rgb8)
            .unwrap();
        let err = decode(&bytes, &metadata_limit(4096)).unwrap_err();
        assert_too_large(
            &err,
            "jpeg icc profile is 5000 bytes, above the max_metadata_bytes limit of 4096",
        );
        decode(&bytes, &metadata_limit(5000)).unwrap();
    }

    #[test]
    fn jpeg_exif_above_the_metadata_limit_is_refused() {
        let plain = jpeg(16, 16);
        let mut app1 = b"Exif\0\0MM\0*".to_vec();
        app1.resize(3000, 0);
        let mut bytes = plain[..2].to_vec();
        bytes.extend_from_slice(&[0xFF, 0xE1]);
        bytes.extend_from_slice(&(app1.len() as u16 + 2).to_be_bytes());
        bytes.extend_from_slice(&app1);
        bytes.extend_from_slice(&plain[2..]);
        let err = decode(&bytes, &metadata_limit(2048)).unwrap_err();
        assert_too_large(&err, "jpeg exif block is");
        assert_too_large(&err, "max_metadata_bytes limit of 2048");
        decode(&bytes, &metadata_limit(4096)).unwrap();
    }

    fn assert_truncated_jpeg(bytes: &[u8], what: &str) {
        match decode(bytes, &DecodeLimits::default()) {
            Err(err @ DecodeError::Corrupt { format: "jpeg", .. }) => {
                assert!(err.to_string().contains("truncated"), "{what}: {err}")
            }
            Err(err) => panic!("{what}: {err}"),
            Ok(_) => panic!("{what}: decoded, with the missing part filled in"),
        }
    }

    #[test]
    fn truncated_baseline_and_progressive_jpegs_are_corrupt_not_grey() {
        for (kind, bytes) in [
            ("baseline", jpeg(96, 64)),
            ("progressive", progressive_jpeg(96, 64)),
        ] {
            decode(&bytes, &DecodeLimits::default()).unwrap();
            // Down to a cut inside the last row of blocks, which zune-jpeg's strict mode misses.
            for cut in [bytes.len() / 2, bytes.len() * 3 / 4, bytes.len() - 40] {
                assert_truncated_jpeg(&bytes[..cut], &format!("{kind} cut at {cut}"));
            }
        }
    }

    #[test]
    fn jpeg_end_marker_inside_a_thumbnail_does_not_count_for_the_image() {
        let plain = jpeg(64, 64);
        // An APP1 segment holding what looks like a whole JPEG thumbnail, end marker included.
        let thumbnail = [&b"Exif\0\0"[..], &[0xFF, 0xD8, 0xFF, 0xD9]].concat();
        let mut bytes = plain[..2].to_vec();
        bytes.extend_from_slice(&[0xFF, 0xE1]);
        bytes.extend_from_slice(&(thumbnail.len() as u16 + 2).to_be_bytes());
        bytes.extend_from_slice(&thumbnail);
        bytes.extend_from_slice(&plain[2..]);
        decode(&bytes, &DecodeLimits::default()).unwrap();
        assert_truncated_jpeg(&bytes[..bytes.len() - 100], "cut with a thumbnail inside");
    }

    #[test]
    fn jpeg_lacking_only_its_end_marker_is_refused_as_truncated() {
        let bytes = jpeg(32, 32);
        assert_eq!(&bytes[bytes.len() - 2..], &[0xFF, 0xD9]);
        assert_truncated_jpeg(&bytes[..bytes.len() - 2], "without its end marker");
    }

    #[test]
    fn jpeg_followed_by_a_second_image_decodes_the_first() {
        // Gain maps and MPF files append further JPEGs after the first end marker.
        let bytes = [jpeg(40, 20), jpeg(8, 8)[..100].to_vec()].concat();
        let (image, _) = decode(&bytes, &DecodeLimits::default()).unwrap();
        assert_eq!((image.width, image.height), (40, 20));
    }

    #[test]
    fn jpeg_with_stray_bytes_between_segments_still_decodes() {
        let plain = jpeg(32, 32);
        // After SOI and the first segment, which the encoder always writes.
        let first_end = 4 + u16::from_be_bytes([plain[4], plain[5]]) as usize;
        let odd = [&plain[..first_end], &[0x11; 8][..], &plain[first_end..]].concat();
        let (image, _) = decode(&odd, &DecodeLimits::default()).unwrap();
        assert_eq!((image.width, image.height), (32, 32));
    }

    /// A JPEG of a smooth pattern, so that a scaled decode can be compared with a reduction.
    fn smooth_jpeg(width: u32, height: u32) -> Vec<u8> {
        let pixels: Vec<u8> = (0..height)
            .flat_map(|y| (0..width).flat_map(move |x| [(x / 3) as u8, (y / 2) as u8, 128]))
            .collect();
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95)
            .write_image(&pixels, width, height, image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    #[test]
    fn jpeg_is_decoded_at_the_smallest_scale_that_holds_the_need() {
        let bytes = smooth_jpeg(512, 256);
        let limits = DecodeLimits::default();
        let need = |width, height| {
            assert_eq!(
                (width, height),
                (512, 256),
                "the need is asked of the full size"
            );
            (100, 50)
        };
        let (scaled, info) = decode_at_least(&bytes, &limits, &need).unwrap();
        // 1/8 would be 64×32, too small for 100×50.
        assert_eq!((scaled.width, scaled.height), (128, 64));
        assert_eq!(scaled.pixels.len(), 128 * 64 * 4);
        assert_eq!(scaled.full_size(), (512, 256));
        assert_eq!((info.width, info.height), (512, 256));

        // Each scaled pixel is close to the mean of the 4×4 block it stands for.
        let (full, _) = decode(&bytes, &limits).unwrap();
        assert_eq!(
            (full.width, full.height, full.full_size()),
            (512, 256, (512, 256))
        );
        let mut worst = 0.0f64;
        for y in 0..64 {
            for x in 0..128 {
                for c in 0..3 {
                    let block: f64 = (0..16)
                        .map(|k| {
                            let (fx, fy) = (x * 4 + k % 4, y * 4 + k / 4);
                            f64::from(full.pixels[(fy * 512 + fx) * 4 + c])
                        })
                        .sum::<f64>()
                        / 16.0;
                    let got = f64::from(scaled.pixels[(y * 128 + x) * 4 + c]);
                    worst = worst.max((got - block).abs());
                }
            }
        }
        assert!(
            worst <= 4.0,
            "a scaled pixel is {worst} levels from its block"
        );
    }

    #[test]
    fn formats_that_cannot_scale_while_decoding_come_out_at_full_size() {
        let bytes = png(64, 32, [1, 2, 3, 255]);
        let (image, info) =
            decode_at_least(&bytes, &DecodeLimits::default(), &|_, _| (1, 1)).unwrap();
        assert_eq!(
            (image.width, image.height, image.full_size()),
            (64, 32, (64, 32))
        );
        assert_eq!((info.width, info.height), (64, 32));
    }

    #[test]
    fn jpeg_errors_read_as_one_line() {
        let bytes = jpeg(16, 16);
        let err = decode(&bytes[..100], &DecodeLimits::default()).unwrap_err();
        assert!(matches!(err, DecodeError::Corrupt { .. }), "{err}");
        let text = err.to_string();
        assert!(!text.contains('\n') && !text.contains('"'), "{text:?}");
    }

    #[test]
    fn gif_screen_is_refused_from_the_header() {
        let mut bytes = b"GIF89a".to_vec();
        bytes.extend_from_slice(&25_000u16.to_le_bytes());
        bytes.extend_from_slice(&25_000u16.to_le_bytes());
        bytes.extend_from_slice(&[0, 0, 0, 0x3B]);
        let err = decode(&bytes, &DecodeLimits::default()).unwrap_err();
        assert_too_large(&err, "625000000 pixels, above the max_pixels limit");
    }

    /// Where the first image descriptor starts, after the header, screen descriptor, palette and
    /// the encoder's graphic control extension.
    fn first_descriptor(gif: &[u8]) -> usize {
        6 + 7 + 6 + gif[19..].iter().position(|&b| b == 0x2C).unwrap()
    }

    #[test]
    fn gif_frames_after_the_first_are_never_decoded() {
        // Code 7 right after a clear code does not exist yet: decoding any of these frames
        // would fail.
        let broken = one_pixel_gif_frame([0x7C, 0x01]);
        let bytes = gif_with((8, 8), (8, 8), &broken.repeat(9_999));
        let (image, _) = decode(&bytes, &DecodeLimits::default()).unwrap();
        assert_eq!((image.width, image.height), (8, 8));
        assert!(image.pixels.chunks(4).all(|p| p == [255, 0, 0, 255]));

        let start = first_descriptor(&bytes);
        let broken_first = [&bytes[..start], &broken[..], &[0x3B]].concat();
        let err = decode(&broken_first, &DecodeLimits::default()).unwrap_err();
        assert!(
            matches!(err, DecodeError::Corrupt { format: "gif", .. }),
            "the same frame does fail when it comes first: {err}"
        );
    }

    #[test]
    fn gif_first_frame_is_pasted_at_its_offset_on_a_transparent_screen() {
        let mut bytes = gif_with((4, 3), (1, 1), &[]);
        // Move the 1×1 first frame to (2, 1).
        let descriptor = first_descriptor(&bytes);
        bytes[descriptor + 1..descriptor + 5].copy_from_slice(&[2, 0, 1, 0]);
        let (image, _) = decode(&bytes, &DecodeLimits::default()).unwrap();
        let pixel = |x: usize, y: usize| &image.pixels[(y * 4 + x) * 4..][..4];
        assert_eq!(pixel(2, 1), [255, 0, 0, 255]);
        assert_eq!(pixel(0, 0), [0, 0, 0, 0]);
        assert_eq!(pixel(3, 2), [0, 0, 0, 0]);
        assert!(image.has_alpha);
    }

    #[test]
    fn gif_first_frame_above_the_decode_budget_is_too_large() {
        // The frame may be larger than the screen; the decoder still needs room for all of it.
        let bytes = gif_with((16, 16), (600, 600), &[]);
        let limits = DecodeLimits {
            max_decode_bytes: 1 << 20,
            ..DecodeLimits::default()
        };
        let err = decode(&bytes, &limits).unwrap_err();
        assert_too_large(&err, "600×600");
        assert_too_large(&err, "max_decode_bytes limit of 1048576");
    }

    #[test]
    fn gif_frame_above_the_gif_crates_own_50_mb_default_decodes_within_our_budget() {
        let bytes = gif_with((3600, 3600), (3600, 3600), &[]);
        let (image, _) = decode(&bytes, &DecodeLimits::default()).unwrap();
        assert_eq!((image.width, image.height), (3600, 3600));
        assert_eq!(&image.pixels[image.pixels.len() - 4..], &[255, 0, 0, 255]);
    }

    #[test]
    fn webp_canvas_is_refused_from_the_header() {
        // Lossless: 14 bits each of width - 1 and height - 1, all ones: 16384×16384.
        let lossless = webp(&webp_chunk(b"VP8L", &[0x2f, 0xff, 0xff, 0xff, 0x0f]));
        let err = decode(&lossless, &DecodeLimits::default()).unwrap_err();
        assert_too_large(&err, "268435456 pixels, above the max_pixels limit");

        // Extended: 24 bits each of canvas width - 1 and height - 1, all ones.
        let extended = webp(&webp_chunk(
            b"VP8X",
            &[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ));
        let err = decode(&extended, &DecodeLimits::default()).unwrap_err();
        assert_too_large(&err, "a side of 16777216 px is above the max_side limit");
    }

    #[test]
    fn webp_icc_profile_above_the_metadata_limit_is_refused() {
        let mut lossless = Vec::new();
        image::codecs::webp::WebPEncoder::new_lossless(&mut lossless)
            .write_image(&[200u8; 4 * 4 * 4], 4, 4, image::ExtendedColorType::Rgba8)
            .unwrap();
        // VP8X with the ICC flag and a 4×4 canvas, the profile, then the encoder's image chunk.
        let vp8x = [0x20, 0, 0, 0, 3, 0, 0, 3, 0, 0];
        let chunks = [
            webp_chunk(b"VP8X", &vp8x),
            webp_chunk(b"ICCP", &[1; 3000]),
            lossless[12..].to_vec(),
        ]
        .concat();
        let bytes = webp(&chunks);
        let err = decode(&bytes, &metadata_limit(2048)).unwrap_err();
        assert_too_large(
            &err,
            "webp icc profile is 3000 bytes, above the max_metadata_bytes limit of 2048",
        );
        decode(&bytes, &metadata_limit(4096)).unwrap();
    }

    #[test]
    fn a_decoder_panic_is_reported_as_corrupt_input() {
        let err = guarded::<()>("png", || panic!("index out of bounds")).unwrap_err();
        assert!(
            matches!(err, DecodeError::Corrupt { format: "png", .. }),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains("decoder panicked") && text.contains("index out of bounds"),
            "{text}"
        );
    }
}
