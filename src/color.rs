//! Colour management: every decoded image leaves here as sRGB RGBA8.
//!
//! An embedded RGB or CMYK ICC profile is applied with moxcms, so that a photograph in Adobe RGB,
//! Display P3 or a press CMYK space keeps its colours when it is shown as an sRGB WebP. A CMYK
//! image without a profile is converted with the plain complement formula. A profile that cannot
//! be parsed, or of a kind we do not convert (grey, Lab), is ignored and the pixels are taken as
//! sRGB, which is what browsers do with such files.
//!
//! # Limitations
//!
//! Grey-scale ICC profiles are not applied: grey images are taken as sRGB grey.

use moxcms::{ColorProfile, DataColorSpace, Layout, TransformOptions};

/// Converts RGBA8 pixels described by `icc` to sRGB in place. Returns whether a conversion
/// happened. Alpha passes through unchanged.
pub fn rgba_to_srgb(pixels: &mut [u8], icc: &[u8]) -> bool {
    let Some(profile) = parse(icc, DataColorSpace::Rgb) else {
        return false;
    };
    let srgb = ColorProfile::new_srgb();
    let transform =
        match profile.create_transform_8bit(Layout::Rgba, &srgb, Layout::Rgba, options()) {
            Ok(t) => t,
            Err(err) => {
                log::debug!("icc profile ignored: cannot build a transform: {err}");
                return false;
            }
        };
    let source = pixels.to_vec();
    match transform.transform(&source, pixels) {
        Ok(()) => true,
        Err(err) => {
            log::debug!("icc profile ignored: transform failed: {err}");
            pixels.copy_from_slice(&source);
            false
        }
    }
}

/// Converts CMYK8 samples (0 = no ink, as in the file after undoing Adobe's inversion) to opaque
/// sRGB RGBA8, through `icc` when it is a usable CMYK profile.
pub fn cmyk_to_srgb_rgba(cmyk: &[u8], icc: Option<&[u8]>) -> Vec<u8> {
    let profiled = icc
        .and_then(|icc| parse(icc, DataColorSpace::Cmyk))
        .and_then(|profile| cmyk_through_profile(cmyk, &profile));
    profiled.unwrap_or_else(|| cmyk_complement(cmyk))
}

fn cmyk_through_profile(cmyk: &[u8], profile: &ColorProfile) -> Option<Vec<u8>> {
    let srgb = ColorProfile::new_srgb();
    let transform = profile
        .create_transform_8bit(Layout::Rgba, &srgb, Layout::Rgba, options())
        .map_err(|err| log::debug!("cmyk profile ignored: cannot build a transform: {err}"))
        .ok()?;
    let mut rgba = vec![0u8; cmyk.len()];
    transform
        .transform(cmyk, &mut rgba)
        .map_err(|err| log::debug!("cmyk profile ignored: transform failed: {err}"))
        .ok()?;
    for p in rgba.chunks_exact_mut(4) {
        p[3] = 255;
    }
    Some(rgba)
}

/// The profile-less conversion: each channel is the product of the complements of its ink and
/// of black.
pub fn cmyk_complement(cmyk: &[u8]) -> Vec<u8> {
    let mut rgba = Vec::with_capacity(cmyk.len());
    for p in cmyk.chunks_exact(4) {
        let k = 255 - p[3] as u32;
        for &ink in &p[..3] {
            rgba.push((((255 - ink as u32) * k + 127) / 255) as u8);
        }
        rgba.push(255);
    }
    rgba
}

fn parse(icc: &[u8], wanted: DataColorSpace) -> Option<ColorProfile> {
    match ColorProfile::new_from_slice(icc) {
        Ok(profile) if profile.color_space == wanted => Some(profile),
        Ok(profile) => {
            log::debug!(
                "icc profile ignored: colour space {:?}",
                profile.color_space
            );
            None
        }
        Err(err) => {
            log::debug!("icc profile ignored: cannot parse it: {err}");
            None
        }
    }
}

fn options() -> TransformOptions {
    TransformOptions::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complement_maps_no_ink_to_white_and_full_black_to_black() {
        assert_eq!(cmyk_complement(&[0, 0, 0, 0]), vec![255, 255, 255, 255]);
        assert_eq!(cmyk_complement(&[0, 0, 0, 255]), vec![0, 0, 0, 255]);
        assert_eq!(cmyk_complement(&[255, 0, 0, 0]), vec![0, 255, 255, 255]);
    }

    #[test]
    fn an_unparseable_profile_leaves_pixels_alone() {
        let mut pixels = vec![10, 20, 30, 40];
        assert!(!rgba_to_srgb(&mut pixels, b"not a profile"));
        assert_eq!(pixels, vec![10, 20, 30, 40]);
    }

    #[test]
    fn an_srgb_profile_is_close_to_identity() {
        let icc = ColorProfile::new_srgb().encode().unwrap();
        let mut pixels = vec![10, 128, 250, 77, 0, 0, 0, 255, 255, 255, 255, 0];
        let before = pixels.clone();
        assert!(rgba_to_srgb(&mut pixels, &icc));
        for (a, b) in pixels.iter().zip(&before) {
            assert!(a.abs_diff(*b) <= 1, "{pixels:?} vs {before:?}");
        }
    }
}
