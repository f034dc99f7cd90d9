//! The CUDA backend. The start-up tests hold on any host the `cuda` feature is built on: they
//! hide every device with `CUDA_VISIBLE_DEVICES=` so the driver answers "no device" even on a
//! GPU host. The comparisons with the CPU backend and the long run need a device; they are
//! ignored elsewhere and run with `cargo test --features cuda -- --ignored` (scripts/gpu-check).
#![cfg(feature = "cuda")]

mod support;

use std::time::Duration;

use image_worker::backend::Backend;
use image_worker::backend::cpu::CpuBackend;
use image_worker::backend::cuda::CudaBackend;
use image_worker::decode::SourceImage;
use image_worker::ops::default_plan;
use support::*;

/// Whether the driver library loads on this host (libcuda1 or NVIDIA's driver installed).
fn driver_library_loads() -> bool {
    // SAFETY: dlopen of a library by name; the handle is left open.
    !unsafe { libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) }.is_null()
}

/// What the driver says without a usable device, as the daemon must report it.
fn expected_reason() -> &'static str {
    if driver_library_loads() {
        "CUDA_ERROR_NO_DEVICE"
    } else {
        "cannot load the NVIDIA driver library libcuda.so.1"
    }
}

/// Runs the worker with `args`, the test's roots and every CUDA device hidden.
fn run_without_devices(dirs: &Dirs, args: &[&str]) -> std::process::Output {
    worker_command(dirs)
        .args(args)
        .arg("--input-root")
        .arg(&dirs.input)
        .arg("--output-root")
        .arg(&dirs.output)
        .env("CUDA_VISIBLE_DEVICES", "")
        .output()
        .unwrap()
}

#[test]
fn backend_cuda_without_a_device_exits_2_with_the_drivers_reason() {
    let dirs = Dirs::new();
    let output = run_without_devices(
        &dirs,
        &["run", "--backend", "cuda", "--redis", "redis://127.0.0.1:1"],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(expected_reason()), "{stderr}");
}

#[test]
fn backend_auto_without_a_device_warns_once_and_uses_the_cpu() {
    let dirs = Dirs::new();
    let input = dirs.input_file("a.png", &png_rgba(90, 60));
    let out = dirs.output.join("a");
    let output = worker_command(&dirs)
        .args([
            "process",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .args(["--backend", "auto", "--log-level", "info"])
        .env("CUDA_VISIBLE_DEVICES", "")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("backend=auto"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning line: {stderr}");
    assert!(warnings[0].contains(expected_reason()), "{stderr}");
    assert!(warnings[0].contains("using the cpu backend"), "{stderr}");
    for rendition in ["thumb", "blur", "lq"] {
        let file = out.join("a").join(format!("a_{rendition}.webp"));
        assert!(file.is_file(), "{} missing: {stderr}", file.display());
    }
}

#[test]
fn check_reports_the_cpu_fallback_of_auto() {
    let redis = RedisServer::start();
    let dirs = Dirs::new();
    let output = run_without_devices(
        &dirs,
        &["check", "--backend", "auto", "--redis", &redis.url()],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("cpu backend"), "{text}");
    assert!(text.contains(expected_reason()), "{text}");
}

// ---- With a device -------------------------------------------------------------------------

/// Noise over gradients, so that both smooth areas and edges are compared; with alpha, a
/// ramp of transparency including fully transparent and fully opaque regions.
fn test_image(width: u32, height: u32, alpha: bool, seed: u32) -> SourceImage {
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        (state >> 24) as i32 - 128
    };
    let mut pixels = Vec::with_capacity((width * height * 4) as usize);
    for y in 0..height {
        for x in 0..width {
            let gx = (x * 255 / width.max(1)) as i32;
            let gy = (y * 255 / height.max(1)) as i32;
            let edge = if (x / 7 + y / 5) % 2 == 0 { 60 } else { -60 };
            let r = (gx + edge + noise() / 4).clamp(0, 255) as u8;
            let g = (gy - edge + noise() / 4).clamp(0, 255) as u8;
            let b = ((gx + gy) / 2 + noise() / 2).clamp(0, 255) as u8;
            let a = if alpha {
                match x * 4 / width.max(1) {
                    0 => 0,
                    1 => 255,
                    _ => ((x + y) * 3 % 256) as u8,
                }
            } else {
                255
            };
            pixels.extend_from_slice(&[r, g, b, a]);
        }
    }
    SourceImage::new(width, height, pixels, alpha)
}

/// Colour as it is seen: premultiplied by alpha, so that the colour of nearly transparent
/// pixels (where a difference of one in premultiplied value is large after division) counts
/// as little as it shows.
fn visible(p: &[u8]) -> [f64; 4] {
    let a = p[3] as f64 / 255.0;
    [
        p[0] as f64 * a,
        p[1] as f64 * a,
        p[2] as f64 * a,
        p[3] as f64,
    ]
}

/// Max absolute difference per channel of the visible colour, and the PSNR over all channels.
fn compare(gpu: &[u8], cpu: &[u8]) -> (f64, f64) {
    let mut max = 0f64;
    let mut squares = 0f64;
    for (g, c) in gpu.chunks(4).zip(cpu.chunks(4)) {
        let (g, c) = (visible(g), visible(c));
        for k in 0..4 {
            let d = (g[k] - c[k]).abs();
            max = max.max(d);
            squares += d * d;
        }
    }
    let mse = squares / gpu.len() as f64;
    let psnr = if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    };
    (max, psnr)
}

/// The stated tolerance: both backends compute the same filters in the same order with different
/// arithmetic (fast_image_resize in fixed point, the kernels in f32 with fused multiply-adds),
/// so single values may differ by a few levels, never by a visible amount over the image. The
/// same tables emulated on the CPU stay within 2.5 levels and above 55 dB (src/backend/coeffs.rs).
const MAX_DIFFERENCE: f64 = 4.0;
const MIN_PSNR: f64 = 50.0;

#[test]
#[ignore = "needs a CUDA device"]
fn cuda_matches_the_cpu_backend_for_every_rendition_and_size() {
    let mut gpu = CudaBackend::new().expect("a CUDA device");
    let mut cpu = CpuBackend::new();
    let sizes = [
        (1, 1),
        (2, 3),
        (17, 9),
        (64, 64),
        (321, 241),
        (1279, 1281),
        (10000, 3),
        (3, 10000),
        (1920, 1080),
        (8000, 6000),
    ];
    let plan = default_plan();
    let mut report = Vec::new();
    for (i, &(w, h)) in sizes.iter().enumerate() {
        for alpha in [false, true] {
            let source = test_image(w, h, alpha, i as u32 + 1);
            let g = gpu.render(&source, &plan).unwrap();
            let c = cpu.render(&source, &plan).unwrap();
            assert_eq!(g.len(), c.len());
            for (g, c) in g.iter().zip(&c) {
                let name = format!("{w}×{h} alpha={alpha} {}", g.spec.rendition.name());
                assert_eq!(
                    (g.width, g.height),
                    (c.width, c.height),
                    "{name}: dimensions"
                );
                assert_eq!(g.pixels.len(), c.pixels.len(), "{name}");
                let (max, psnr) = compare(&g.pixels, &c.pixels);
                report.push(format!("{name}: max {max:.1} psnr {psnr:.1}"));
                assert!(
                    max <= MAX_DIFFERENCE && psnr >= MIN_PSNR,
                    "{name}: max difference {max:.1} (≤ {MAX_DIFFERENCE}), PSNR {psnr:.1} dB \
                     (≥ {MIN_PSNR})"
                );
            }
        }
    }
    note(&report.join("\n"));
}

#[test]
#[ignore = "needs a CUDA device"]
fn device_memory_is_stable_after_warm_up_over_1000_images() {
    let mut gpu = CudaBackend::new().expect("a CUDA device");
    let plan = default_plan();
    let sizes = [(4000, 3000), (640, 480), (3000, 4000), (1, 1), (2500, 2500)];
    let images: Vec<SourceImage> = sizes
        .iter()
        .enumerate()
        .map(|(i, &(w, h))| test_image(w, h, i % 2 == 1, i as u32))
        .collect();
    let mut after_warm_up = None;
    for round in 0..1000 {
        let source = &images[round % images.len()];
        let out = gpu.render(source, &plan).unwrap();
        assert_eq!(out.len(), 3);
        if round == images.len() * 2 {
            after_warm_up = gpu.device_memory_used();
        }
    }
    let (before, after) = (after_warm_up.unwrap(), gpu.device_memory_used().unwrap());
    note(&format!(
        "device memory in use: after warm-up {before} B, after 1000 images {after} B"
    ));
    assert!(
        after <= before + (1 << 20),
        "device memory grew from {before} to {after} bytes"
    );
}

#[test]
#[ignore = "needs a CUDA device"]
fn daemon_on_the_gpu_finishes_1000_jobs() {
    let redis = RedisServer::start();
    let dirs = Dirs::new();
    let mut conn = redis.conn();
    let inputs = [
        dirs.input_file("a.jpg", &jpeg(1600, 1200)),
        dirs.input_file("b.png", &png_rgba(700, 500)),
        dirs.input_file("c.jpg", &jpeg(300, 200)),
    ];
    let names: Vec<String> = (0..1000).map(|i| format!("gpu{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        push_job(&mut conn, &job_json(name, &inputs[i % inputs.len()]));
    }
    let daemon = Daemon::start(&redis, &dirs, &["--backend", "cuda", "--workers", "8"]);
    wait_for_outcomes(&mut conn, names.len(), Duration::from_secs(300));
    assert!(daemon.stop().success(), "clean exit after SIGTERM");
    let (done, failed) = assert_invariant(&mut conn, &names, &dirs.output);
    assert_eq!((done, failed), (1000, 0));
}
