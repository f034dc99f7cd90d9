//! JPEG: the header and metadata through zune-jpeg's header pass, the pixels through
//! libjpeg-turbo's TurboJPEG API.
//!
//! libjpeg-turbo is used for the pixels because it can scale in the DCT domain while decoding
//! ("shrink-on-load"): a photograph whose largest rendition needs half its size is decoded at
//! half size, so colour conversion, the ICC transform, rotation and resampling all see a quarter
//! of the pixels. Only the power-of-two scales 1/2, 1/4 and 1/8 are used, the ones libjpeg-turbo
//! has SIMD inverse transforms for, and only down to the smallest that still holds the largest
//! rendition: the renditions are resampled from an image at least their size, never enlarged.
//!
//! TurboJPEG 2.1 (Debian bookworm's) gives neither the ICC profile nor the EXIF block, so
//! zune-jpeg's header pass, which reads segments and no scan data, still provides those, and
//! both libraries must agree on the image's size.

use std::ffi::{CStr, c_char, c_int, c_uchar, c_ulong, c_void};

use image::metadata::Orientation;
use zune_jpeg::JpegDecoder;
use zune_jpeg::errors::DecodeErrors;
use zune_jpeg::zune_core::bytestream::ZCursor;
use zune_jpeg::zune_core::options::DecoderOptions;

use super::{SourceImage, be_u16, check_dimensions, check_metadata, corrupt, turns};
use crate::color;
use crate::config::DecodeLimits;
use crate::decode::DecodeError;

/// The scales tried, smallest first, as numerator and denominator.
const SCALES: [(u32, u32); 3] = [(1, 8), (1, 4), (1, 2)];

/// Decodes a JPEG at the smallest of [`SCALES`] (or full size) whose upright size is at least
/// what `need` asks for, given the full upright size.
pub(super) fn decode_jpeg(
    bytes: &[u8],
    limits: &DecodeLimits,
    need: &dyn Fn(u32, u32) -> (u32, u32),
) -> Result<(SourceImage, Orientation), DecodeError> {
    // JPEG's own maximum; our tighter side limit is checked below with a clearer message.
    let options = DecoderOptions::default()
        .set_max_width(65_535)
        .set_max_height(65_535);
    let mut header = JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    header
        .decode_headers()
        .map_err(|err: DecodeErrors| corrupt("jpeg", err))?;
    let info = header.info().expect("headers were decoded");
    let (width, height) = (u32::from(info.width), u32::from(info.height));
    let components = u64::from(info.components).clamp(1, 4);
    // The output (RGBA or CMYK, at most full size) plus, for a progressive file, libjpeg's
    // whole-image coefficient buffer of two bytes per sample.
    check_dimensions(width, height, 4 + 2 * components, limits)?;
    let icc = header.icc_profile();
    check_metadata(
        "jpeg",
        "icc profile",
        icc.as_ref().map_or(0, Vec::len),
        limits,
    )?;
    let exif = header.exif();
    check_metadata("jpeg", "exif block", exif.map_or(0, Vec::len), limits)?;
    let orientation = exif
        .and_then(|exif| Orientation::from_exif_chunk(exif))
        .unwrap_or(Orientation::NoTransforms);

    // libjpeg fills whatever a truncated file lacks with grey and only warns.
    if jpeg_scan_end(bytes) == ScanEnd::EndOfFile {
        return Err(corrupt(
            "jpeg",
            "truncated: the file ends inside its scan data, before the end-of-image marker",
        ));
    }

    let decompressor = Decompressor::new()?;
    let header = decompressor.header(bytes)?;
    if (header.width, header.height) != (width, height) {
        return Err(corrupt(
            "jpeg",
            format!(
                "the header reads {width}×{height} to one parser and {}×{} to another",
                header.width, header.height
            ),
        ));
    }
    let cmyk = matches!(header.colorspace, TJCS_CMYK | TJCS_YCCK);
    let (scaled_width, scaled_height) = scaled_size((width, height), orientation, need);
    let format = if cmyk { TJPF_CMYK } else { TJPF_RGBA };
    let samples = decompressor.decompress(bytes, (scaled_width, scaled_height), format)?;

    let pixels = if cmyk {
        let mut inks = samples;
        // libjpeg turns YCCK into CMYK as stored. Adobe's writers, the only ones of YCCK, store
        // CMYK inverted (255 = no ink).
        if has_adobe_marker(bytes) {
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
            width: scaled_width,
            height: scaled_height,
            pixels,
            has_alpha: false,
            full_width: width,
            full_height: height,
        },
        orientation,
    ))
}

/// The decoded size for a stored `full` size: the smallest of [`SCALES`] at which the upright
/// image is still at least `need(upright size)` on both sides, or `full` itself.
fn scaled_size(
    full: (u32, u32),
    orientation: Orientation,
    need: &dyn Fn(u32, u32) -> (u32, u32),
) -> (u32, u32) {
    let turned = turns(orientation);
    let swap = |(a, b): (u32, u32)| if turned { (b, a) } else { (a, b) };
    let upright = swap(full);
    let (need_w, need_h) = swap(need(upright.0, upright.1));
    SCALES
        .iter()
        .map(|&(num, denom)| (scale(full.0, num, denom), scale(full.1, num, denom)))
        .find(|&(w, h)| w >= need_w && h >= need_h)
        .unwrap_or(full)
}

/// libjpeg's scaled size of a side: rounded up.
fn scale(side: u32, num: u32, denom: u32) -> u32 {
    (side * num).div_ceil(denom)
}

/// How a JPEG's scan data ends, as far as its bytes tell.
#[derive(Debug, PartialEq)]
enum ScanEnd {
    EndMarker,
    EndOfFile,
    /// The walk found no start of scan; the decoder judges such files.
    Unknown,
}

/// Follows the file from its first scan to the end-of-image marker. In scan data a 0xFF byte is
/// followed by a stuffed zero, fill, a restart marker or a marker whose segment (tables, the
/// next scan of a progressive file) is skipped by its length, so an end marker inside an EXIF
/// thumbnail or a table is never taken for the image's own.
fn jpeg_scan_end(bytes: &[u8]) -> ScanEnd {
    let Some(mut at) = jpeg_first_scan(bytes) else {
        return ScanEnd::Unknown;
    };
    loop {
        let Some(marker_at) = jpeg_next_marker(bytes, at) else {
            return ScanEnd::EndOfFile;
        };
        match bytes[marker_at + 1] {
            0xD9 => return ScanEnd::EndMarker,
            0xD0..=0xD7 => at = marker_at + 2,
            _ => match be_u16(bytes, marker_at + 2) {
                Some(length) => at = marker_at + 2 + usize::from(length),
                None => return ScanEnd::EndOfFile,
            },
        }
    }
}

/// The offset just past the first start-of-scan segment header, walking the header segments by
/// their lengths and skipping stray bytes between them as decoders do.
fn jpeg_first_scan(bytes: &[u8]) -> Option<usize> {
    let mut at = 2; // after SOI
    loop {
        let marker_at = jpeg_next_marker(bytes, at)?;
        let marker = bytes[marker_at + 1];
        match marker {
            0xD9 => return None,
            // Markers without a segment.
            0x01 | 0xD0..=0xD8 => at = marker_at + 2,
            _ => {
                at = marker_at + 2 + usize::from(be_u16(bytes, marker_at + 2)?);
                if marker == 0xDA {
                    return Some(at);
                }
            }
        }
    }
}

/// The next 0xFF at or after `at` that starts a marker: not fill (0xFF 0xFF) and not a stuffed
/// data byte (0xFF 0x00).
fn jpeg_next_marker(bytes: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let found = at + bytes.get(at..)?.iter().position(|&b| b == 0xFF)?;
        match bytes.get(found + 1)? {
            0x00 | 0xFF => at = found + 1,
            _ => return Some(found),
        }
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

// ---- TurboJPEG ----

/// `TJCS_CMYK` and `TJCS_YCCK` of `enum TJCS`.
const TJCS_CMYK: c_int = 3;
const TJCS_YCCK: c_int = 4;
/// `TJPF_RGBA` and `TJPF_CMYK` of `enum TJPF`.
const TJPF_RGBA: c_int = 7;
const TJPF_CMYK: c_int = 11;
/// Refuse progressive files of more than 500 scans, which can take minutes to decode.
const TJFLAG_LIMITSCANS: c_int = 32768;
/// `TJERR_WARNING` of `enum TJERR`: the image was decoded, with a complaint about its data.
const TJERR_WARNING: c_int = 0;

#[link(name = "turbojpeg")]
unsafe extern "C" {
    fn tjInitDecompress() -> *mut c_void;
    fn tjDestroy(handle: *mut c_void) -> c_int;
    fn tjDecompressHeader3(
        handle: *mut c_void,
        jpeg: *const c_uchar,
        jpeg_size: c_ulong,
        width: *mut c_int,
        height: *mut c_int,
        subsampling: *mut c_int,
        colorspace: *mut c_int,
    ) -> c_int;
    fn tjDecompress2(
        handle: *mut c_void,
        jpeg: *const c_uchar,
        jpeg_size: c_ulong,
        out: *mut c_uchar,
        width: c_int,
        pitch: c_int,
        height: c_int,
        pixel_format: c_int,
        flags: c_int,
    ) -> c_int;
    fn tjGetErrorStr2(handle: *mut c_void) -> *mut c_char;
    fn tjGetErrorCode(handle: *mut c_void) -> c_int;
}

/// What TurboJPEG's header pass reads.
struct Header {
    width: u32,
    height: u32,
    colorspace: c_int,
}

/// One TurboJPEG decompressor, destroyed on drop.
struct Decompressor(*mut c_void);

impl Decompressor {
    fn new() -> Result<Decompressor, DecodeError> {
        // SAFETY: no arguments; a null handle is an allocation failure.
        let handle = unsafe { tjInitDecompress() };
        if handle.is_null() {
            return Err(DecodeError::TooLarge(
                "libjpeg-turbo could not allocate a decompressor".into(),
            ));
        }
        Ok(Decompressor(handle))
    }

    fn header(&self, bytes: &[u8]) -> Result<Header, DecodeError> {
        let (mut width, mut height, mut subsampling, mut colorspace) = (0, 0, 0, 0);
        // SAFETY: the handle is live, `bytes` is valid for its length and the out-pointers
        // point at locals.
        let status = unsafe {
            tjDecompressHeader3(
                self.0,
                bytes.as_ptr(),
                bytes.len() as c_ulong,
                &mut width,
                &mut height,
                &mut subsampling,
                &mut colorspace,
            )
        };
        self.check(status)?;
        Ok(Header {
            width: width.max(0) as u32,
            height: height.max(0) as u32,
            colorspace,
        })
    }

    /// Decodes into four bytes per pixel of `format` at `size`, one of libjpeg's scaled sizes.
    fn decompress(
        &self,
        bytes: &[u8],
        size: (u32, u32),
        format: c_int,
    ) -> Result<Vec<u8>, DecodeError> {
        let (width, height) = (size.0 as usize, size.1 as usize);
        let mut out = vec![0u8; width * height * 4];
        // SAFETY: the handle is live, `bytes` is valid for its length, and `out` holds
        // `height` rows of `width * 4` bytes, which is what a pitch of 0 means for a
        // four-byte format at this size.
        let status = unsafe {
            tjDecompress2(
                self.0,
                bytes.as_ptr(),
                bytes.len() as c_ulong,
                out.as_mut_ptr(),
                size.0 as c_int,
                0,
                size.1 as c_int,
                format,
                TJFLAG_LIMITSCANS,
            )
        };
        self.check(status)?;
        Ok(out)
    }

    /// The outcome of a call that returned `status`: a warning about the data (extraneous
    /// bytes, a bad restart marker) is not an error, as browsers show such files; anything
    /// else is, in libjpeg-turbo's words.
    fn check(&self, status: c_int) -> Result<(), DecodeError> {
        // SAFETY: the handle is live.
        if status == 0 || unsafe { tjGetErrorCode(self.0) } == TJERR_WARNING {
            return Ok(());
        }
        // SAFETY: the handle is live; the message is a NUL-terminated string that the handle
        // owns until its next call.
        let message = unsafe { CStr::from_ptr(tjGetErrorStr2(self.0)) };
        Err(corrupt("jpeg", message.to_string_lossy()))
    }
}

impl Drop for Decompressor {
    fn drop(&mut self) {
        // SAFETY: the handle came from tjInitDecompress and is destroyed once.
        unsafe { tjDestroy(self.0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at_least(w: u32, h: u32) -> impl Fn(u32, u32) -> (u32, u32) {
        move |_, _| (w, h)
    }

    #[test]
    fn scale_is_the_smallest_that_holds_what_is_needed() {
        let none = Orientation::NoTransforms;
        assert_eq!(
            scaled_size((4000, 3000), none, &at_least(1280, 960)),
            (2000, 1500)
        );
        assert_eq!(
            scaled_size((4000, 3000), none, &at_least(1000, 750)),
            (1000, 750)
        );
        assert_eq!(
            scaled_size((4000, 3000), none, &at_least(320, 240)),
            (500, 375)
        );
        assert_eq!(
            scaled_size((4000, 3000), none, &at_least(2001, 1)),
            (4000, 3000)
        );
        // Rounded up as libjpeg does: 1001 / 8 is 125.125.
        assert_eq!(scaled_size((1001, 9), none, &at_least(1, 1)), (126, 2));
    }

    #[test]
    fn a_turned_image_is_scaled_by_its_upright_need() {
        // Stored 4000×3000, shown 3000×4000; upright, 750×1000 is needed: 1/4 of the shown
        // size, which is 1000×750 as stored.
        let upright_need = |w: u32, h: u32| {
            assert_eq!((w, h), (3000, 4000));
            (750, 1000)
        };
        let turned = Orientation::Rotate90;
        assert_eq!(
            scaled_size((4000, 3000), turned, &upright_need),
            (1000, 750)
        );
        // The same need read as stored would not fit 1/4 (750 high is below 1000).
        let none = Orientation::NoTransforms;
        assert_eq!(
            scaled_size((4000, 3000), none, &at_least(750, 1000)),
            (2000, 1500)
        );
    }
}
