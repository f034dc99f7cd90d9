//! Kernel benchmark for `scripts/gpu-check`: times every step of the GPU stage on generated
//! photographs of common sizes and compares the bytes each kernel moves with the device's
//! memory bandwidth. Prints a Markdown report.
//!
//! cargo run --release --features cuda --example gpu-bench [-- ROUNDS]

use std::time::Instant;

use image_worker::backend::Backend;
use image_worker::backend::cuda::CudaBackend;
use image_worker::decode::SourceImage;

fn photo_like(width: u32, height: u32, alpha: bool) -> SourceImage {
    let mut pixels = Vec::with_capacity(width as usize * height as usize * 4);
    for y in 0..height {
        for x in 0..width {
            let v = ((x ^ y) & 0xff) as u8;
            let a = if alpha { (x * 255 / width) as u8 } else { 255 };
            pixels.extend_from_slice(&[v, (x % 251) as u8, (y % 241) as u8, a]);
        }
    }
    SourceImage::new(width, height, pixels, alpha)
}

fn main() {
    let rounds: u32 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let mut gpu = match CudaBackend::new() {
        Ok(gpu) => gpu,
        Err(err) => {
            eprintln!("gpu-bench: {err}");
            std::process::exit(2);
        }
    };
    let info = gpu.info().clone();
    let plan = image_worker::ops::default_plan();
    println!("# GPU kernel benchmark\n");
    println!("{}\n", gpu.describe());
    println!(
        "Peak memory bandwidth from clock and bus width: {:.0} GB/s. {rounds} rounds per size.\n",
        info.bandwidth / 1e9
    );
    println!("| image | alpha | step | ms | GB/s | of peak |");
    println!("|---|---|---|---:|---:|---:|");
    let mut stage = Vec::new();
    for (w, h) in [(1024, 768), (3000, 2000), (4032, 3024), (8000, 6000)] {
        for alpha in [false, true] {
            let source = photo_like(w, h, alpha);
            let profile = match gpu.profile(&source, &plan, rounds) {
                Ok(p) => p,
                Err(err) => {
                    eprintln!("gpu-bench: {w}×{h}: {err}");
                    std::process::exit(1);
                }
            };
            for (step, ms) in &profile.ms {
                let bytes = profile.bytes.get(step).copied().unwrap_or(0.0);
                let (rate, share) = if bytes > 0.0 && *ms > 0.0 {
                    let rate = bytes / (ms / 1e3);
                    (
                        format!("{:.0}", rate / 1e9),
                        format!("{:.0} %", rate / info.bandwidth * 100.0),
                    )
                } else {
                    (String::new(), String::new())
                };
                println!("| {w}×{h} | {alpha} | {step} | {ms:.3} | {rate} | {share} |");
            }
            let started = Instant::now();
            for _ in 0..rounds {
                gpu.render(&source, &plan).unwrap();
            }
            let per_job = started.elapsed().as_secs_f64() * 1e3 / rounds as f64;
            stage.push(format!("| {w}×{h} | {alpha} | {per_job:.2} |"));
        }
    }
    println!(
        "\nPer-job GPU stage (render call: staging copy, upload, kernels, download, wall time):\n"
    );
    println!("| image | alpha | ms per job |");
    println!("|---|---|---:|");
    for line in stage {
        println!("{line}");
    }
    if let Some(used) = gpu.device_memory_used() {
        println!(
            "\nDevice memory in use after the run: {:.1} MiB",
            used as f64 / (1 << 20) as f64
        );
    }
}
