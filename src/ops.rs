//! Renditions and the pixel arithmetic every backend shares.
//!
//! A rendition is a box the image is fitted into (never upscaled), an optional Gaussian blur and
//! a WebP quality. This module owns the geometry (`fit_within`), the validation of a job's `ops`
//! overrides against sane bounds, and the reference definitions of the blur kernel and of alpha
//! premultiplication. The CPU backend uses these directly; the CUDA kernels implement the same
//! formulas and are compared against them.

use serde_json::Value;

/// The three renditions of the design.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rendition {
    Thumb,
    Blur,
    Lq,
}

/// Bounds a per-job override must respect.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub max_size: u64,
    pub min_sigma: f32,
    pub max_sigma: f32,
}

impl Rendition {
    pub const ALL: [Rendition; 3] = [Rendition::Thumb, Rendition::Blur, Rendition::Lq];

    pub fn name(self) -> &'static str {
        match self {
            Rendition::Thumb => "thumb",
            Rendition::Blur => "blur",
            Rendition::Lq => "lq",
        }
    }

    pub fn from_name(name: &str) -> Option<Rendition> {
        Rendition::ALL.into_iter().find(|r| r.name() == name)
    }

    /// Whether this rendition is blurred after fitting.
    pub fn is_blurred(self) -> bool {
        self == Rendition::Blur
    }

    pub fn bounds(self) -> Bounds {
        match self {
            Rendition::Blur => Bounds {
                max_size: 256,
                min_sigma: 0.1,
                max_sigma: 32.0,
            },
            Rendition::Thumb | Rendition::Lq => Bounds {
                max_size: 4096,
                min_sigma: 0.0,
                max_sigma: 0.0,
            },
        }
    }
}

/// One rendition to produce: fit inside `size`×`size`, blur by `sigma` (blur only), encode at
/// `quality` with libwebp's `method` (0 fastest to 6 smallest; from the config only, never
/// from a job).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RenditionSpec {
    pub rendition: Rendition,
    pub size: u32,
    pub quality: f32,
    pub sigma: f32,
    pub method: u8,
}

/// The size of an image fitted inside a `box_w`×`box_h` box, keeping the aspect ratio, rounding
/// the shorter side to the nearest pixel, never below 1 and never larger than the source.
pub fn fit_within(width: u32, height: u32, box_w: u32, box_h: u32) -> (u32, u32) {
    assert!(
        width > 0 && height > 0 && box_w > 0 && box_h > 0,
        "sizes are positive"
    );
    if width <= box_w && height <= box_h {
        return (width, height);
    }
    let (w, h, bw, bh) = (width as u64, height as u64, box_w as u64, box_h as u64);
    // Width-limited when w/h >= bw/bh, compared in integers to avoid rounding at the boundary.
    if w * bh >= h * bw {
        let scaled = ((2 * h * bw + w) / (2 * w)).max(1);
        (box_w, scaled as u32)
    } else {
        let scaled = ((2 * w * bh + h) / (2 * h)).max(1);
        (scaled as u32, box_h)
    }
}

/// The smallest size that holds every rendition of `plan` made from a `width`×`height` image:
/// what a decoder that scales while decoding may shrink the image to.
pub fn largest_fit(width: u32, height: u32, plan: &[RenditionSpec]) -> (u32, u32) {
    plan.iter()
        .map(|spec| fit_within(width, height, spec.size, spec.size))
        .fold((1, 1), |(w, h), (fw, fh)| (w.max(fw), h.max(fh)))
}

/// Reads a job's optional `ops` field into the list of renditions to make.
///
/// `ops` is either an array of rendition names or an object whose keys are rendition names and
/// whose values hold overrides (`size`, `quality`, and `sigma` for blur). The result is in the
/// fixed order thumb, blur, lq. Any unknown name, unknown override or out-of-range value is an
/// error that names it.
pub fn plan_from_ops(
    ops: Option<&Value>,
    defaults: &[RenditionSpec],
) -> Result<Vec<RenditionSpec>, String> {
    let default_of = |r: Rendition| *defaults.iter().find(|s| s.rendition == r).expect("default");
    let Some(ops) = ops else {
        return Ok(Rendition::ALL.into_iter().map(default_of).collect());
    };
    let mut plan = Vec::new();
    match ops {
        Value::Array(names) => {
            for name in names {
                let name = name.as_str().ok_or("ops entries must be rendition names")?;
                let rendition = known_rendition(name)?;
                plan.push(default_of(rendition));
            }
        }
        Value::Object(map) => {
            for (name, overrides) in map {
                let rendition = known_rendition(name)?;
                plan.push(apply_overrides(default_of(rendition), overrides)?);
            }
        }
        _ => return Err("ops must be an array of names or an object".into()),
    }
    plan.sort_by_key(|spec| spec.rendition);
    let before = plan.len();
    plan.dedup_by_key(|spec| spec.rendition);
    if plan.len() != before {
        return Err("ops names a rendition twice".into());
    }
    if plan.is_empty() {
        return Err("ops selects no rendition".into());
    }
    Ok(plan)
}

fn known_rendition(name: &str) -> Result<Rendition, String> {
    Rendition::from_name(name)
        .ok_or_else(|| format!("unknown rendition '{name}' in ops (expected thumb, blur or lq)"))
}

fn apply_overrides(mut spec: RenditionSpec, overrides: &Value) -> Result<RenditionSpec, String> {
    let name = spec.rendition.name();
    let fields = match overrides {
        Value::Null => return Ok(spec),
        Value::Object(fields) => fields,
        _ => return Err(format!("ops.{name} must be an object of overrides")),
    };
    let bounds = spec.rendition.bounds();
    for (field, value) in fields {
        let number = value
            .as_f64()
            .ok_or_else(|| format!("ops.{name}.{field} must be a number"))?;
        match field.as_str() {
            "size" => {
                let ok = number.fract() == 0.0 && (1.0..=bounds.max_size as f64).contains(&number);
                if !ok {
                    return Err(format!(
                        "ops.{name}.size {number} is outside 1 to {}",
                        bounds.max_size
                    ));
                }
                spec.size = number as u32;
            }
            "quality" => {
                if !(0.0..=100.0).contains(&number) {
                    return Err(format!("ops.{name}.quality {number} is outside 0 to 100"));
                }
                spec.quality = number as f32;
            }
            "sigma" if spec.rendition.is_blurred() => {
                let (lo, hi) = (bounds.min_sigma as f64, bounds.max_sigma as f64);
                if !(lo..=hi).contains(&number) {
                    return Err(format!("ops.{name}.sigma {number} is outside {lo} to {hi}"));
                }
                spec.sigma = number as f32;
            }
            _ => return Err(format!("unknown override ops.{name}.{field}")),
        }
    }
    Ok(spec)
}

/// The normalised one-dimensional Gaussian kernel for `sigma`, of radius `ceil(3 sigma)` (at
/// least 1): index `radius` is the centre tap.
pub fn gaussian_kernel(sigma: f32) -> Vec<f32> {
    let radius = (3.0 * sigma).ceil().max(1.0) as i32;
    let denom = 2.0 * sigma * sigma;
    let taps: Vec<f32> = (-radius..=radius)
        .map(|i| (-((i * i) as f32) / denom).exp())
        .collect();
    let sum: f32 = taps.iter().sum();
    taps.into_iter().map(|t| t / sum).collect()
}

/// Blurs an RGBA8 image in place with a separable Gaussian, clamping at the borders.
///
/// The caller premultiplies first when the image has alpha; each channel is filtered alike.
pub fn gaussian_blur_rgba(pixels: &mut [u8], width: u32, height: u32, sigma: f32) {
    let (w, h) = (width as usize, height as usize);
    assert_eq!(pixels.len(), w * h * 4, "RGBA8 buffer of width × height");
    let kernel = gaussian_kernel(sigma);
    let radius = (kernel.len() / 2) as isize;
    let mut rows = vec![0f32; w * h * 4];

    // Row pass: source bytes into a float buffer.
    for y in 0..h {
        for x in 0..w {
            let mut acc = [0f32; 4];
            for (k, weight) in kernel.iter().enumerate() {
                let sx = (x as isize + k as isize - radius).clamp(0, w as isize - 1) as usize;
                let p = &pixels[(y * w + sx) * 4..][..4];
                for c in 0..4 {
                    acc[c] += weight * p[c] as f32;
                }
            }
            rows[(y * w + x) * 4..][..4].copy_from_slice(&acc);
        }
    }

    // Column pass: float buffer back into bytes, rounded to nearest.
    for y in 0..h {
        for x in 0..w {
            let mut acc = [0f32; 4];
            for (k, weight) in kernel.iter().enumerate() {
                let sy = (y as isize + k as isize - radius).clamp(0, h as isize - 1) as usize;
                let p = &rows[(sy * w + x) * 4..][..4];
                for c in 0..4 {
                    acc[c] += weight * p[c];
                }
            }
            for c in 0..4 {
                pixels[(y * w + x) * 4 + c] = (acc[c] + 0.5).clamp(0.0, 255.0) as u8;
            }
        }
    }
}

/// Multiplies each colour channel by alpha: `c' = round(c × a / 255)`.
pub fn premultiply_rgba(pixels: &mut [u8]) {
    for p in pixels.chunks_exact_mut(4) {
        let a = p[3] as u32;
        for c in &mut p[..3] {
            *c = ((*c as u32 * a + 127) / 255) as u8;
        }
    }
}

/// Undoes [`premultiply_rgba`]: `c = round(c' × 255 / a)`, clamped; fully transparent pixels
/// become black.
pub fn unpremultiply_rgba(pixels: &mut [u8]) {
    for p in pixels.chunks_exact_mut(4) {
        let a = p[3] as u32;
        for c in &mut p[..3] {
            *c = (*c as u32 * 255 + a / 2)
                .checked_div(a)
                .map_or(0, |v| v.min(255) as u8);
        }
    }
}

/// The design's three renditions with their default settings, in plan order; what a job
/// without `ops` gets from a config that changes none of them.
pub fn default_plan() -> Vec<RenditionSpec> {
    let spec = |rendition, size, quality, sigma, method| RenditionSpec {
        rendition,
        size,
        quality,
        sigma,
        method,
    };
    vec![
        spec(Rendition::Thumb, 320, 80.0, 0.0, 4),
        spec(Rendition::Blur, 64, 60.0, 3.0, 4),
        spec(Rendition::Lq, 1280, 30.0, 0.0, 2),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn defaults() -> Vec<RenditionSpec> {
        default_plan()
    }

    #[test]
    fn fit_within_keeps_smaller_images_as_they_are() {
        assert_eq!(fit_within(100, 50, 320, 320), (100, 50));
        assert_eq!(fit_within(320, 320, 320, 320), (320, 320));
    }

    #[test]
    fn fit_within_never_upscales() {
        assert_eq!(fit_within(1, 1, 1280, 1280), (1, 1));
        assert_eq!(fit_within(10, 3, 64, 64), (10, 3));
    }

    #[test]
    fn fit_within_limits_the_longer_side() {
        assert_eq!(fit_within(4000, 3000, 320, 320), (320, 240));
        assert_eq!(fit_within(3000, 4000, 320, 320), (240, 320));
        assert_eq!(fit_within(640, 640, 320, 320), (320, 320));
    }

    #[test]
    fn largest_fit_is_the_biggest_rendition_on_each_side() {
        let plan = defaults();
        assert_eq!(largest_fit(4000, 3000, &plan), (1280, 960));
        assert_eq!(largest_fit(500, 300, &plan), (500, 300));
        // Small boxes only: the larger of them decides, whatever the shape.
        let mixed = [
            RenditionSpec {
                size: 40,
                ..plan[0]
            },
            RenditionSpec {
                size: 30,
                ..plan[1]
            },
        ];
        assert_eq!(largest_fit(100, 1000, &mixed), (4, 40));
        assert_eq!(largest_fit(1000, 100, &mixed), (40, 4));
    }

    #[test]
    fn fit_within_rounds_to_nearest() {
        // 333 × 320 / 500 = 213.12, and 334 × 320 / 500 = 213.76.
        assert_eq!(fit_within(500, 333, 320, 320), (320, 213));
        assert_eq!(fit_within(500, 334, 320, 320), (320, 214));
        // Exactly half rounds up: 3 × 64 / 128 = 1.5.
        assert_eq!(fit_within(128, 3, 64, 64), (64, 2));
    }

    #[test]
    fn fit_within_extreme_aspect_ratios_keep_one_pixel() {
        assert_eq!(fit_within(10_000, 1, 320, 320), (320, 1));
        assert_eq!(fit_within(1, 10_000, 64, 64), (1, 64));
        assert_eq!(fit_within(10_000, 3, 1280, 1280), (1280, 1)); // 0.384 rounds up to 1
        assert_eq!(fit_within(65_535, 65_535, 64, 64), (64, 64));
    }

    #[test]
    fn fit_within_respects_non_square_boxes() {
        assert_eq!(fit_within(1000, 1000, 200, 100), (100, 100));
        assert_eq!(fit_within(4000, 1000, 200, 100), (200, 50));
    }

    #[test]
    fn plan_without_ops_is_all_three_defaults() {
        assert_eq!(plan_from_ops(None, &defaults()).unwrap(), defaults());
    }

    #[test]
    fn plan_takes_a_subset_in_fixed_order() {
        let plan = plan_from_ops(Some(&json!(["lq", "thumb"])), &defaults()).unwrap();
        let names: Vec<_> = plan.iter().map(|s| s.rendition).collect();
        assert_eq!(names, vec![Rendition::Thumb, Rendition::Lq]);
    }

    #[test]
    fn plan_applies_overrides() {
        let ops = json!({"blur": {"size": 32, "sigma": 1.5}, "lq": {"quality": 50}});
        let plan = plan_from_ops(Some(&ops), &defaults()).unwrap();
        assert_eq!(plan[0].size, 32);
        assert_eq!(plan[0].sigma, 1.5);
        assert_eq!(plan[1].quality, 50.0);
        assert_eq!(plan[1].size, 1280);
    }

    #[test]
    fn plan_refuses_out_of_bounds_and_unknown_overrides() {
        for ops in [
            json!({"thumb": {"size": 0}}),
            json!({"thumb": {"size": 100000}}),
            json!({"thumb": {"size": 10.5}}),
            json!({"lq": {"quality": 101}}),
            json!({"blur": {"sigma": 0}}),
            json!({"thumb": {"sigma": 2}}),
            json!({"thumb": {"width": 2}}),
            json!({"poster": {}}),
            json!(["thumb", "thumb"]),
            json!([]),
            json!("thumb"),
        ] {
            assert!(
                plan_from_ops(Some(&ops), &defaults()).is_err(),
                "{ops} should be refused"
            );
        }
    }

    #[test]
    fn gaussian_kernel_is_normalised_and_symmetric() {
        let k = gaussian_kernel(3.0);
        assert_eq!(k.len(), 19);
        assert!((k.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        assert_eq!(k[0], k[18]);
        assert!(k[9] > k[8]);
    }

    #[test]
    fn blur_of_a_flat_image_is_flat() {
        let mut pixels = [10u8, 20, 30, 255].repeat(7 * 5);
        gaussian_blur_rgba(&mut pixels, 7, 5, 3.0);
        assert!(pixels.chunks(4).all(|p| p == [10, 20, 30, 255]));
    }

    #[test]
    fn blur_spreads_a_point_and_keeps_its_mass() {
        let (w, h) = (21u32, 21u32);
        let mut pixels = vec![0u8; (w * h * 4) as usize];
        let centre = ((10 * w + 10) * 4) as usize;
        pixels[centre] = 255;
        gaussian_blur_rgba(&mut pixels, w, h, 1.0);
        assert!(pixels[centre] < 255 && pixels[centre] > 0);
        assert!(
            pixels[centre + 4] > 0,
            "the neighbour receives some of the point"
        );
        let mass: u32 = pixels.chunks(4).map(|p| p[0] as u32).sum();
        assert!((230..=280).contains(&mass), "mass {mass} stays near 255");
    }

    #[test]
    fn premultiply_round_trip_is_close_for_opaque_and_exact_for_transparent() {
        let mut pixels = vec![200, 100, 50, 255, 200, 100, 50, 128, 200, 100, 50, 0];
        premultiply_rgba(&mut pixels);
        assert_eq!(&pixels[..4], &[200, 100, 50, 255]);
        assert_eq!(&pixels[4..8], &[100, 50, 25, 128]);
        assert_eq!(&pixels[8..], &[0, 0, 0, 0]);
        unpremultiply_rgba(&mut pixels);
        assert_eq!(&pixels[..4], &[200, 100, 50, 255]);
        assert!(pixels[4].abs_diff(200) <= 1 && pixels[5].abs_diff(100) <= 1);
    }
}
