//! Weight tables for separable resampling, computed on the host for the GPU kernels.
//!
//! For each output sample `i` of a reduction from `src` to `dst` samples, the table holds the
//! first input index `starts[i]` and `taps` weights (zero-padded past the window) that sum to
//! one. The filter is widened by the reduction ratio, so a reduction averages every input it
//! covers instead of skipping some: that is the antialiasing. Sample centres sit at `i + 0.5`
//! on both sides, the convention of fast_image_resize and of the CPU backend.

/// A separable reconstruction filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// Area averaging: every input covered by the output's footprint, weighted equally.
    Box,
    /// Windowed sinc with three lobes.
    Lanczos3,
}

impl Filter {
    /// Half-width of the filter at scale 1, in input samples.
    fn support(self) -> f64 {
        match self {
            Filter::Box => 0.5,
            Filter::Lanczos3 => 3.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Filter::Box => {
                if (-0.5..0.5).contains(&x) {
                    1.0
                } else {
                    0.0
                }
            }
            Filter::Lanczos3 => {
                if x.abs() >= 3.0 {
                    0.0
                } else {
                    sinc(x) * sinc(x / 3.0)
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let px = std::f64::consts::PI * x;
        px.sin() / px
    }
}

/// The weights of one axis: output sample `i` reads inputs `starts[i] .. starts[i] + taps`.
#[derive(Clone, Debug, PartialEq)]
pub struct Coefficients {
    pub taps: usize,
    pub starts: Vec<i32>,
    /// `starts.len() * taps` weights, row by row.
    pub weights: Vec<f32>,
}

impl Coefficients {
    /// The table for resampling `src` samples to `dst` samples with `filter`.
    pub fn new(src: u32, dst: u32, filter: Filter) -> Coefficients {
        assert!(src > 0 && dst > 0, "resampling needs samples on both sides");
        let scale = src as f64 / dst as f64;
        // Reductions widen the filter; enlargements keep it at its own size.
        let stretch = scale.max(1.0);
        let support = filter.support() * stretch;
        let taps = ((support * 2.0).ceil() as usize + 1).min(src as usize);
        let mut starts = Vec::with_capacity(dst as usize);
        let mut weights = vec![0f32; dst as usize * taps];
        for i in 0..dst as usize {
            let centre = (i as f64 + 0.5) * scale;
            let first = ((centre - support).floor().max(0.0) as usize).min(src as usize - 1);
            let end = ((centre + support).ceil() as usize).min(src as usize);
            // The window may be wider than `taps` by one sample at the edges of rounding; a
            // start further left keeps it inside the table without dropping weight.
            let first = first.max(end.saturating_sub(taps));
            let row = &mut weights[i * taps..][..taps];
            let mut sum = 0.0;
            let mut raw = vec![0f64; taps];
            for (k, slot) in raw.iter_mut().enumerate() {
                let j = first + k;
                if j >= end {
                    break;
                }
                let w = filter.weight((j as f64 + 0.5 - centre) / stretch);
                *slot = w;
                sum += w;
            }
            if sum == 0.0 {
                // A window that holds no weight (cannot happen for these filters, but a table
                // must never darken): take the nearest input.
                let nearest = (centre.floor() as usize).min(src as usize - 1);
                starts.push(nearest as i32);
                row[0] = 1.0;
                continue;
            }
            for (slot, w) in row.iter_mut().zip(&raw) {
                *slot = (w / sum) as f32;
            }
            starts.push(first as i32);
        }
        Coefficients {
            taps,
            starts,
            weights,
        }
    }

    /// Applies the table to one line of RGBA samples; the reference the GPU kernels follow,
    /// used by tests.
    pub fn apply_line(&self, line: &[[f32; 4]]) -> Vec<[f32; 4]> {
        self.starts
            .iter()
            .enumerate()
            .map(|(i, &start)| {
                let mut acc = [0f32; 4];
                for k in 0..self.taps {
                    let w = self.weights[i * self.taps + k];
                    if w == 0.0 {
                        continue;
                    }
                    let p = line[(start as usize + k).min(line.len() - 1)];
                    for c in 0..4 {
                        acc[c] += w * p[c];
                    }
                }
                acc
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::backend::cpu::CpuBackend;
    use crate::decode::SourceImage;
    use crate::ops::{self, RenditionSpec};

    fn check_rows_sum_to_one(c: &Coefficients) {
        for row in c.weights.chunks(c.taps) {
            let sum: f32 = row.iter().sum();
            assert!((sum - 1.0).abs() < 2e-4, "row sums to {sum}");
        }
    }

    #[test]
    fn every_row_sums_to_one_and_stays_inside_the_source() {
        for (src, dst) in [
            (1, 1),
            (7, 3),
            (8000, 320),
            (3, 10000),
            (10000, 1),
            (641, 640),
        ] {
            for filter in [Filter::Box, Filter::Lanczos3] {
                let c = Coefficients::new(src, dst, filter);
                assert_eq!(c.starts.len(), dst as usize);
                check_rows_sum_to_one(&c);
                for (i, &start) in c.starts.iter().enumerate() {
                    assert!(start >= 0 && (start as u32) < src, "{src}->{dst} row {i}");
                    let row = &c.weights[i * c.taps..][..c.taps];
                    for (k, &w) in row.iter().enumerate() {
                        if w != 0.0 {
                            assert!((start as usize + k) < src as usize, "{src}->{dst} row {i}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn box_halving_averages_pairs() {
        let c = Coefficients::new(8, 4, Filter::Box);
        let line: Vec<[f32; 4]> = (0..8).map(|i| [i as f32 * 10.0; 4]).collect();
        let out = c.apply_line(&line);
        let values: Vec<f32> = out.iter().map(|p| p[0]).collect();
        assert_eq!(values, vec![5.0, 25.0, 45.0, 65.0]);
    }

    #[test]
    fn identity_size_reproduces_the_line() {
        for filter in [Filter::Box, Filter::Lanczos3] {
            let c = Coefficients::new(37, 37, filter);
            let line: Vec<[f32; 4]> = (0..37).map(|i| [(i * 7 % 255) as f32; 4]).collect();
            let out = c.apply_line(&line);
            for (a, b) in out.iter().zip(&line) {
                assert!((a[0] - b[0]).abs() < 1e-3, "{filter:?}: {a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn lanczos_reduction_of_a_constant_stays_constant_and_is_symmetric() {
        let c = Coefficients::new(5000, 321, Filter::Lanczos3);
        let line = vec![[200.0f32; 4]; 5000];
        assert!(
            c.apply_line(&line)
                .iter()
                .all(|p| (p[0] - 200.0).abs() < 1e-2)
        );
        // Mirroring the input mirrors the output.
        let ramp: Vec<[f32; 4]> = (0..5000).map(|i| [i as f32; 4]).collect();
        let reversed: Vec<[f32; 4]> = ramp.iter().rev().copied().collect();
        let forward = c.apply_line(&ramp);
        let backward = c.apply_line(&reversed);
        for (a, b) in forward.iter().zip(backward.iter().rev()) {
            assert!((a[0] - b[0]).abs() < 0.05, "{} vs {}", a[0], b[0]);
        }
    }

    #[test]
    fn reduction_footprint_widens_with_the_ratio() {
        let narrow = Coefficients::new(640, 320, Filter::Lanczos3);
        let wide = Coefficients::new(8000, 320, Filter::Lanczos3);
        assert!(narrow.taps <= 13, "{}", narrow.taps);
        assert!(wide.taps >= 150, "{}", wide.taps);
    }

    /// Resamples premultiplied RGBA8 `pixels` of `from` size to `to` as the kernels do: column
    /// pass then row pass in f32 with these tables, each rounded to bytes.
    fn emulate_resample(
        pixels: &[u8],
        from: (u32, u32),
        to: (u32, u32),
        filter: Filter,
    ) -> Vec<u8> {
        if from == to {
            return pixels.to_vec();
        }
        let (sw, sh) = (from.0 as usize, from.1 as usize);
        let (w, h) = to;
        let x = Coefficients::new(from.0, w, filter);
        let y = Coefficients::new(from.1, h, filter);
        let round = |v: f32| (v + 0.5).clamp(0.0, 255.0) as u8;
        let mut columns = vec![0u8; sw * h as usize * 4];
        for col in 0..sw {
            let line: Vec<[f32; 4]> = (0..sh)
                .map(|r| {
                    let p = &pixels[(r * sw + col) * 4..][..4];
                    [p[0] as f32, p[1] as f32, p[2] as f32, p[3] as f32]
                })
                .collect();
            for (r, p) in y.apply_line(&line).iter().enumerate() {
                for c in 0..4 {
                    columns[(r * sw + col) * 4 + c] = round(p[c]);
                }
            }
        }
        let mut out = Vec::with_capacity(w as usize * h as usize * 4);
        for row in columns.chunks(sw * 4) {
            let line: Vec<[f32; 4]> = row
                .chunks(4)
                .map(|p| [p[0] as f32, p[1] as f32, p[2] as f32, p[3] as f32])
                .collect();
            out.extend(x.apply_line(&line).iter().flat_map(|p| p.map(round)));
        }
        out
    }

    /// The GPU's algorithm on the CPU: premultiply the source once, follow the CPU backend's
    /// filter chain with [`emulate_resample`] (each rendition from the premultiplied source or
    /// from a larger rendition's final bytes premultiplied again), blur, unpremultiply.
    fn emulate_gpu(source: &SourceImage, plan: &[RenditionSpec]) -> Vec<Vec<u8>> {
        let dims = (source.width, source.height);
        let mut premultiplied = source.pixels.clone();
        if source.has_alpha {
            ops::premultiply_rgba(&mut premultiplied);
        }
        // Each rendition's final bytes and size, once made.
        type Made = Option<(Vec<u8>, (u32, u32))>;
        let mut made: Vec<Made> = vec![None; plan.len()];
        for step in crate::backend::cpu::cascade(source.full_size(), plan) {
            let spec = &plan[step.index];
            let (input, from) = match step.base {
                Some(b) => {
                    let (mut base, size) = made[b].clone().unwrap();
                    if source.has_alpha {
                        ops::premultiply_rgba(&mut base);
                    }
                    (base, size)
                }
                None => (premultiplied.clone(), dims),
            };
            let filter = if spec.rendition.is_blurred() {
                Filter::Box
            } else {
                Filter::Lanczos3
            };
            let mut out = emulate_resample(&input, from, step.size, filter);
            if spec.rendition.is_blurred() {
                ops::gaussian_blur_rgba(&mut out, step.size.0, step.size.1, spec.sigma);
            }
            if step.size == dims && !spec.rendition.is_blurred() {
                // Same size as the source: a copy of the source as it came.
                out = source.pixels.clone();
            } else if source.has_alpha {
                ops::unpremultiply_rgba(&mut out);
            }
            made[step.index] = Some((out, step.size));
        }
        made.into_iter().map(|m| m.unwrap().0).collect()
    }

    fn noisy_image(width: u32, height: u32, alpha: bool) -> SourceImage {
        let mut state = 0x2545_f491_u32;
        let mut pixels = Vec::new();
        for y in 0..height {
            for x in 0..width {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let n = state >> 26;
                let edge = if (x / 7 + y / 5) % 2 == 0 { 60 } else { 0 };
                let v = |base: u32| ((base + edge + n) % 256) as u8;
                let a = if alpha {
                    ((x * 255 / width.max(1) + n) % 256) as u8
                } else {
                    255
                };
                pixels.extend_from_slice(&[
                    v(x * 200 / width.max(1)),
                    v(y * 200 / height.max(1)),
                    v(100),
                    a,
                ]);
            }
        }
        SourceImage::new(width, height, pixels, alpha)
    }

    /// The tables, applied in the kernels' order (columns, round, rows, round) along the CPU
    /// backend's filter chain, reproduce the CPU backend: no visible colour value off by more
    /// than 3 and PSNR at least 55 dB (seen: at most 2.5, at least 55.5 dB, the lowest for the
    /// placeholder with alpha). The GPU test (tests/cuda.rs) allows a little more for the
    /// device's fused multiply-adds.
    #[test]
    fn tables_reproduce_the_cpu_backend_within_the_gpu_tolerance() {
        let plan = ops::default_plan();
        let mut cpu = CpuBackend::new();
        for (w, h) in [
            (1, 1),
            (17, 9),
            (321, 241),
            (1500, 1100),
            (5000, 3),
            (3, 700),
        ] {
            for alpha in [false, true] {
                let source = noisy_image(w, h, alpha);
                let reference = cpu.render(&source, &plan).unwrap();
                let emulation = emulate_gpu(&source, &plan);
                for ((spec, cpu_out), emulated) in plan.iter().zip(&reference).zip(emulation) {
                    let (mut max, mut squares) = (0f64, 0f64);
                    for (g, c) in emulated.chunks(4).zip(cpu_out.pixels.chunks(4)) {
                        for k in 0..4 {
                            let weight = |p: &[u8]| if k == 3 { 1.0 } else { p[3] as f64 / 255.0 };
                            let d = (g[k] as f64 * weight(g) - c[k] as f64 * weight(c)).abs();
                            max = max.max(d);
                            squares += d * d;
                        }
                    }
                    let mse = squares / emulated.len() as f64;
                    let psnr = if mse == 0.0 {
                        f64::INFINITY
                    } else {
                        10.0 * (65025.0 / mse).log10()
                    };
                    eprintln!(
                        "{w}x{h} {alpha} {:?} max {max:.2} psnr {psnr:.1}",
                        spec.rendition
                    );
                    assert!(
                        max <= 3.0 && psnr >= 55.0,
                        "{w}×{h} alpha={alpha} {:?}: max {max:.2}, PSNR {psnr:.1}",
                        spec.rendition
                    );
                }
            }
        }
    }
}
