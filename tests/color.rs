//! Colour survives: CMYK and non-sRGB ICC inputs come out as the right sRGB colours.
//!
//! The references are computed here from the published formulas, not by the library the worker
//! uses, so a wrong conversion in the worker cannot agree with them by construction.

mod support;

use std::path::Path;

use support::*;

/// Lossy WebP at the default thumb quality moves a flat colour by a few levels at most.
const TOLERANCE: i32 = 6;

fn process_centre_pixel(dirs: &Dirs, input: &Path, id: &str) -> [u8; 3] {
    let out = dirs.base.path().join("out");
    run_process(dirs, input, &out, id);
    let (w, h, pixels) = read_webp(&out.join(id).join(format!("{id}_thumb.webp")));
    let i = (((h / 2) * w + w / 2) * 4) as usize;
    [pixels[i], pixels[i + 1], pixels[i + 2]]
}

fn assert_close(actual: [u8; 3], expected: [u8; 3], unconverted: [u8; 3], what: &str) {
    for c in 0..3 {
        let diff = (actual[c] as i32 - expected[c] as i32).abs();
        assert!(
            diff <= TOLERANCE,
            "{what}: got {actual:?}, expected {expected:?} (channel {c})"
        );
    }
    let moved = (0..3)
        .map(|c| (expected[c] as i32 - unconverted[c] as i32).abs())
        .max()
        .unwrap();
    assert!(
        moved > 2 * TOLERANCE,
        "{what}: the test colour must change under conversion"
    );
}

fn srgb_to_linear(v: f64) -> f64 {
    if v <= 0.04045 {
        v / 12.92
    } else {
        ((v + 0.055) / 1.055).powf(2.4)
    }
}

fn linear_to_srgb(v: f64) -> f64 {
    let v = v.clamp(0.0, 1.0);
    if v <= 0.0031308 {
        v * 12.92
    } else {
        1.055 * v.powf(1.0 / 2.4) - 0.055
    }
}

/// Display P3 to sRGB: both use the sRGB transfer curve and a D65 white, so the conversion is
/// the linear 3×3 matrix between their primaries.
fn display_p3_to_srgb(p3: [u8; 3]) -> [u8; 3] {
    const M: [[f64; 3]; 3] = [
        [1.224_940_2, -0.224_940_2, 0.0],
        [-0.042_056_9, 1.042_057_1, 0.0],
        [-0.019_637_6, -0.078_636_1, 1.098_273_5],
    ];
    let lin: Vec<f64> = p3
        .iter()
        .map(|&v| srgb_to_linear(v as f64 / 255.0))
        .collect();
    let mut out = [0u8; 3];
    for (row, o) in M.iter().zip(out.iter_mut()) {
        let v = row[0] * lin[0] + row[1] * lin[1] + row[2] * lin[2];
        *o = (linear_to_srgb(v) * 255.0).round() as u8;
    }
    out
}

#[test]
fn display_p3_jpeg_and_png_are_converted_to_srgb() {
    let dirs = Dirs::new();
    let p3 = [200u8, 100, 50];
    let expected = display_p3_to_srgb(p3);
    let profile = moxcms::ColorProfile::new_display_p3().encode().unwrap();
    let (w, h) = (96, 64);

    let rgb = p3.repeat(w * h);
    let jpeg = dirs.input_file(
        "p3.jpg",
        &jpeg_of(&rgb, w as u32, h as u32, Some(profile.clone())),
    );
    assert_close(
        process_centre_pixel(&dirs, &jpeg, "p3jpeg"),
        expected,
        p3,
        "jpeg with P3 profile",
    );

    let rgba = [p3[0], p3[1], p3[2], 255].repeat(w * h);
    let png = dirs.input_file("p3.png", &png_of(&rgba, w as u32, h as u32, Some(profile)));
    assert_close(
        process_centre_pixel(&dirs, &png, "p3png"),
        expected,
        p3,
        "png with P3 profile",
    );
}

#[test]
fn cmyk_and_ycck_jpegs_without_profile_use_the_complement_formula() {
    let dirs = Dirs::new();
    let inks = [[20u8, 100, 200, 30], [0, 0, 0, 0], [180, 20, 60, 90]];
    // 2600 wide is decoded at half size (the lq rendition needs 1280 of it), 80 at full size.
    let sizes = [(80, 60), (2600, 100)];
    for (i, (cmyk, ycck, (width, height))) in inks
        .iter()
        .flat_map(|c| [(*c, false), (*c, true)])
        .flat_map(|(c, ycck)| sizes.map(|size| (c, ycck, size)))
        .enumerate()
    {
        let jpeg = cmyk_jpeg(width, height, cmyk, ycck);
        let input = dirs.input_file(&format!("cmyk{i}.jpg"), &jpeg);
        let k = 255 - cmyk[3] as u32;
        let expected = [0, 1, 2].map(|c| (((255 - cmyk[c] as u32) * k + 127) / 255) as u8);
        let got = process_centre_pixel(&dirs, &input, &format!("cmyk{i}"));
        for c in 0..3 {
            let diff = (got[c] as i32 - expected[c] as i32).abs();
            assert!(
                diff <= TOLERANCE,
                "inks {cmyk:?} (ycck: {ycck}, {width}×{height}): got {got:?}, expected {expected:?}"
            );
        }
    }
}
