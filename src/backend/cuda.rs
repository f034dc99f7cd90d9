//! The CUDA backend: the kernels of `cuda/*.cu` on one device, driven from the backend thread.
//!
//! [`CudaBackend::new`] runs on the backend thread: it loads the driver, takes the device's
//! primary context, loads the embedded fatbin once and looks up every kernel once. Per image:
//! one upload of the RGBA8 source (through a pinned staging buffer), premultiplication on the
//! device when the image has alpha, then for each rendition a horizontal and a vertical
//! resampling pass with weight tables from [`super::coeffs`] (Lanczos3 for thumb and lq, box for
//! the placeholder, followed by the Gaussian row and column passes), all from that one upload;
//! the results come back in one download into pinned memory. Device and pinned buffers only
//! grow; nothing is freed per job.
//!
//! Failures: an out-of-memory for one image sends that image to the CPU backend (and gives the
//! grown buffers back, so one huge image does not hold the device); a sticky error (illegal
//! address, launch failure: the context is unusable) resets the context and rebuilds
//! everything once; a second one stops the process with exit status 1, and the claimed jobs
//! are recovered by the next start.

use std::ffi::{CStr, c_int, c_uint, c_void};
use std::ptr;

use super::coeffs::{Coefficients, Filter};
use super::cpu::{CpuBackend, cascade};
use super::driver::{
    self, CuContext, CuDevice, CuDevicePtr, CuFunction, CuModule, CuStream, CudaError, Driver,
    check,
};
use super::{Backend, BackendError, RenderedImage};
use crate::decode::SourceImage;
use crate::ops::{self, RenditionSpec};

#[repr(C, align(64))]
struct Aligned<T: ?Sized>(T);

static FATBIN: &Aligned<[u8]> =
    &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/kernels.fatbin")));

/// The embedded kernels, as built by `build.rs`.
pub fn fatbin() -> &'static [u8] {
    &FATBIN.0
}

/// The architectures the fatbin was built for (`CUDA_ARCHS` at build time) and its PTX one.
pub const BUILT_ARCHS: &str = env!("IMAGE_WORKER_CUDA_ARCHS");
pub const PTX_ARCH: &str = env!("IMAGE_WORKER_CUDA_PTX_ARCH");
/// The toolkit release of the nvcc that built the kernels.
pub const NVCC_RELEASE: &str = env!("IMAGE_WORKER_NVCC_RELEASE");

/// Largest blur radius the kernels hold (`IW_MAX_BLUR_RADIUS` in `cuda/common.cuh`).
const MAX_BLUR_RADIUS: usize = 127;
const BLUR_TILE: u32 = 128;
const BLUR_LINES: u32 = 4;

/// What the device is, for logs, `check` and `status`.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub name: String,
    pub capability: (i32, i32),
    pub total_memory: usize,
    pub multiprocessors: i32,
    /// Peak memory bandwidth from the memory clock and bus width, bytes per second.
    pub bandwidth: f64,
    /// The newest CUDA release the driver supports, as (major, minor).
    pub driver_cuda: (i32, i32),
}

impl DeviceInfo {
    pub fn summary(&self) -> String {
        format!(
            "{} sm_{}{}, {:.1} GiB, {} SMs, driver CUDA {}.{}, kernels sm_{} + PTX {} from nvcc {}",
            self.name,
            self.capability.0,
            self.capability.1,
            self.total_memory as f64 / (1u64 << 30) as f64,
            self.multiprocessors,
            self.driver_cuda.0,
            self.driver_cuda.1,
            BUILT_ARCHS,
            PTX_ARCH,
            NVCC_RELEASE
        )
    }
}

/// The kernels of the module, looked up once.
struct Kernels {
    premultiply: CuFunction,
    unpremultiply: CuFunction,
    resample_rows: CuFunction,
    resample_cols: CuFunction,
    blur_rows: CuFunction,
    blur_cols: CuFunction,
    /// The constant-memory array of Gaussian taps.
    gauss_taps: CuDevicePtr,
}

/// A device allocation that only grows.
struct DeviceBuffer {
    ptr: CuDevicePtr,
    bytes: usize,
}

/// A page-locked host allocation that only grows.
struct PinnedBuffer {
    ptr: *mut u8,
    bytes: usize,
}

/// Everything that lives in the context. Dropped (and freed) before the context is released.
struct Gpu {
    driver: &'static Driver,
    device: CuDevice,
    _context: CuContext,
    module: CuModule,
    stream: CuStream,
    kernels: Kernels,
    /// The source image (premultiplied in place when it has alpha).
    source: DeviceBuffer,
    /// float4 intermediate of the separable passes.
    scratch: DeviceBuffer,
    /// The box reduction that the blur starts from.
    reduced: DeviceBuffer,
    /// Every rendition's pixels, one after the other.
    output: DeviceBuffer,
    /// Premultiplied copies of the renditions others are resampled from (images with alpha).
    rebase: DeviceBuffer,
    /// Weight tables: starts (i32) and weights (f32) of every pass, and the Gaussian taps.
    tables: DeviceBuffer,
    upload: PinnedBuffer,
    download: PinnedBuffer,
}

pub struct CudaBackend {
    gpu: Option<Gpu>,
    info: DeviceInfo,
    /// For images the device has no memory for.
    cpu: CpuBackend,
    /// Context rebuilds after sticky errors so far.
    rebuilds: u32,
}

/// Why the CUDA backend cannot be used on this host, in words for the operator.
fn unavailable(err: CudaError) -> BackendError {
    BackendError::Unavailable(format!("CUDA is not usable: {err}"))
}

impl CudaBackend {
    /// Opens device 0. Every failure is [`BackendError::Unavailable`] with the driver's reason.
    pub fn new() -> Result<CudaBackend, BackendError> {
        let driver = driver::driver().map_err(BackendError::Unavailable)?;
        // SAFETY: plain driver calls with valid out-pointers, on the backend thread.
        unsafe {
            check("cuInit", (driver.cuInit)(0)).map_err(unavailable)?;
        }
        let info = device_info(driver, 0).map_err(unavailable)?;
        let gpu = Gpu::open(driver, 0, &info)?;
        Ok(CudaBackend {
            gpu: Some(gpu),
            info,
            cpu: CpuBackend::new(),
            rebuilds: 0,
        })
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// Device memory in use by this process's context and everything else on the device.
    pub fn device_memory_used(&self) -> Option<u64> {
        let gpu = self.gpu.as_ref()?;
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: out-pointers to locals; the context is current on this thread.
        let code = unsafe { (gpu.driver.cuMemGetInfo_v2)(&mut free, &mut total) };
        (code == driver::SUCCESS).then(|| (total - free) as u64)
    }

    /// Runs `plan` on the device and times each kernel launch kind, for `scripts/gpu-check`.
    pub fn profile(
        &mut self,
        source: &SourceImage,
        plan: &[RenditionSpec],
        rounds: u32,
    ) -> Result<Profile, BackendError> {
        let gpu = self.gpu.as_mut().ok_or(BackendError::Stopped)?;
        gpu.render(source, plan)
            .map_err(|err| BackendError::Job(err.to_string()))?;
        gpu.profile(source, plan, rounds)
            .map_err(|err| BackendError::Job(err.to_string()))
    }

    fn rebuild(&mut self, cause: &CudaError) {
        self.rebuilds += 1;
        if self.rebuilds > 1 {
            log::error!(
                "cuda: second sticky error ({cause}) after a context rebuild; stopping the \
                 process so that it restarts with a fresh device state (claimed jobs are \
                 recovered at the next start)"
            );
            std::process::exit(1);
        }
        log::error!("cuda: sticky error ({cause}); resetting the context and rebuilding once");
        let gpu = self.gpu.take().expect("a gpu to rebuild");
        let (driver, device) = (gpu.driver, gpu.device);
        drop(gpu);
        // SAFETY: nothing of the old context is used after this; the device handle is valid.
        let reset = unsafe {
            check(
                "cuDevicePrimaryCtxReset_v2",
                (driver.cuDevicePrimaryCtxReset_v2)(device),
            )
        };
        match reset
            .map_err(unavailable)
            .and_then(|()| Gpu::open(driver, 0, &self.info))
        {
            Ok(gpu) => self.gpu = Some(gpu),
            Err(err) => {
                log::error!("cuda: the context cannot be rebuilt ({err}); stopping the process");
                std::process::exit(1);
            }
        }
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn describe(&self) -> String {
        format!("cuda backend: {}", self.info.summary())
    }

    fn render(
        &mut self,
        source: &SourceImage,
        plan: &[RenditionSpec],
    ) -> Result<Vec<RenderedImage>, BackendError> {
        if !fits_launch_limits(source, plan) {
            log::info!(
                "cuda: {}×{} is past the kernels' launch limits; this image runs on the cpu",
                source.width,
                source.height
            );
            return self.cpu.render(source, plan);
        }
        let gpu = self.gpu.as_mut().ok_or(BackendError::Stopped)?;
        let result = gpu.render(source, plan);
        if result.is_err() {
            // Whatever was queued before the failure finishes before the buffers are reused.
            let _ = gpu.sync();
        }
        if let Some(used) = self.device_memory_used() {
            crate::metrics::global().set_device_memory_used(used);
        }
        let gpu = self.gpu.as_mut().ok_or(BackendError::Stopped)?;
        match result {
            Ok(images) => Ok(images),
            Err(err) if err.is_out_of_memory() => {
                log::warn!(
                    "cuda: out of device memory for a {}×{} image ({err}); this image runs on \
                     the cpu",
                    source.width,
                    source.height
                );
                gpu.release_buffers();
                self.cpu.render(source, plan)
            }
            Err(err) if err.is_sticky() => {
                self.rebuild(&err);
                Err(BackendError::Job(format!("cuda context lost: {err}")))
            }
            Err(err) => Err(BackendError::Job(err.to_string())),
        }
    }
}

/// Whether every launch for this image stays within the grid limits and `int` indices.
fn fits_launch_limits(source: &SourceImage, plan: &[RenditionSpec]) -> bool {
    let pixels = source.width as u64 * source.height as u64;
    let grid_y = |rows: u32| rows.div_ceil(8) <= 65_535;
    pixels < i32::MAX as u64
        && grid_y(source.height)
        && plan.iter().all(|spec| {
            let radius = ops::gaussian_kernel(spec.sigma.max(0.1)).len() / 2;
            !spec.rendition.is_blurred() || radius <= MAX_BLUR_RADIUS
        })
}

fn device_info(driver: &Driver, ordinal: c_int) -> Result<DeviceInfo, CudaError> {
    // SAFETY: out-pointers to locals; the driver is initialised.
    unsafe {
        let mut count = 0;
        check("cuDeviceGetCount", (driver.cuDeviceGetCount)(&mut count))?;
        if count <= ordinal {
            return Err(CudaError {
                call: "cuDeviceGetCount",
                code: driver::ERROR_NO_DEVICE,
            });
        }
        let mut device = 0;
        check("cuDeviceGet", (driver.cuDeviceGet)(&mut device, ordinal))?;
        let mut name = [0 as std::ffi::c_char; 256];
        check(
            "cuDeviceGetName",
            (driver.cuDeviceGetName)(name.as_mut_ptr(), 255, device),
        )?;
        let attribute = |attribute| {
            let mut value = 0;
            check(
                "cuDeviceGetAttribute",
                (driver.cuDeviceGetAttribute)(&mut value, attribute, device),
            )
            .map(|()| value)
        };
        let mut total_memory = 0usize;
        check(
            "cuDeviceTotalMem_v2",
            (driver.cuDeviceTotalMem_v2)(&mut total_memory, device),
        )?;
        let mut version = 0;
        check(
            "cuDriverGetVersion",
            (driver.cuDriverGetVersion)(&mut version),
        )?;
        let clock_khz = attribute(driver::ATTRIBUTE_MEMORY_CLOCK_RATE)? as f64;
        let bus_bits = attribute(driver::ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH)? as f64;
        Ok(DeviceInfo {
            name: CStr::from_ptr(name.as_ptr()).to_string_lossy().into_owned(),
            capability: (
                attribute(driver::ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                attribute(driver::ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
            ),
            total_memory,
            multiprocessors: attribute(driver::ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
            // Double data rate: two transfers per clock.
            bandwidth: clock_khz * 1e3 * 2.0 * bus_bits / 8.0,
            driver_cuda: (version / 1000, (version % 1000) / 10),
        })
    }
}

/// The words for a module the driver refuses: which toolkit built it, for what, and what the
/// driver supports.
fn refused_module(err: &CudaError, info: &DeviceInfo) -> BackendError {
    BackendError::Unavailable(format!(
        "the driver refused the embedded CUDA kernels ({err}). They were built by nvcc \
         {NVCC_RELEASE} with SASS for sm_{BUILT_ARCHS} and PTX for compute_{PTX_ARCH}; this \
         driver supports CUDA up to {}.{} and the device is sm_{}{}. Install a driver for CUDA \
         {NVCC_RELEASE} or newer, or rebuild with an nvcc no newer than {}.{} (NVCC=/path/to/nvcc \
         cargo build --release --features cuda), adding the device's architecture to CUDA_ARCHS \
         if it is missing",
        info.driver_cuda.0,
        info.driver_cuda.1,
        info.capability.0,
        info.capability.1,
        info.driver_cuda.0,
        info.driver_cuda.1,
    ))
}

impl Gpu {
    fn open(
        driver: &'static Driver,
        ordinal: c_int,
        info: &DeviceInfo,
    ) -> Result<Gpu, BackendError> {
        // SAFETY: driver calls with valid out-pointers on the thread that will own the context.
        unsafe {
            let mut device = 0;
            check("cuDeviceGet", (driver.cuDeviceGet)(&mut device, ordinal))
                .map_err(unavailable)?;
            let mut context = ptr::null_mut();
            check(
                "cuDevicePrimaryCtxRetain",
                (driver.cuDevicePrimaryCtxRetain)(&mut context, device),
            )
            .map_err(unavailable)?;
            let release = |err: BackendError| {
                (driver.cuDevicePrimaryCtxRelease_v2)(device);
                err
            };
            check("cuCtxSetCurrent", (driver.cuCtxSetCurrent)(context))
                .map_err(unavailable)
                .map_err(release)?;
            let mut module = ptr::null_mut();
            check(
                "cuModuleLoadData",
                (driver.cuModuleLoadData)(&mut module, fatbin().as_ptr().cast()),
            )
            .map_err(|err| release(refused_module(&err, info)))?;
            let mut stream = ptr::null_mut();
            let created = check("cuStreamCreate", (driver.cuStreamCreate)(&mut stream, 0))
                .and_then(|()| Kernels::find(driver, module));
            let kernels = match created {
                Ok(kernels) => kernels,
                Err(err) => {
                    (driver.cuModuleUnload)(module);
                    return Err(release(unavailable(err)));
                }
            };
            Ok(Gpu {
                driver,
                device,
                _context: context,
                module,
                stream,
                kernels,
                source: DeviceBuffer::empty(),
                scratch: DeviceBuffer::empty(),
                reduced: DeviceBuffer::empty(),
                output: DeviceBuffer::empty(),
                rebase: DeviceBuffer::empty(),
                tables: DeviceBuffer::empty(),
                upload: PinnedBuffer::empty(),
                download: PinnedBuffer::empty(),
            })
        }
    }

    /// Gives every grown buffer back to the driver (after an out-of-memory).
    fn release_buffers(&mut self) {
        let driver = self.driver;
        for buffer in [
            &mut self.source,
            &mut self.scratch,
            &mut self.reduced,
            &mut self.output,
            &mut self.rebase,
            &mut self.tables,
        ] {
            buffer.free(driver);
        }
        self.upload.free(driver);
        self.download.free(driver);
    }

    fn render(
        &mut self,
        source: &SourceImage,
        plan: &[RenditionSpec],
    ) -> Result<Vec<RenderedImage>, CudaError> {
        let (jobs, order) = PlannedPass::plan(source, plan);
        self.enqueue(source, &jobs, &order, None)?;
        self.sync()?;
        let mut offset = 0;
        Ok(jobs
            .iter()
            .map(|job| {
                let bytes = job.output_bytes();
                // SAFETY: the download buffer holds every output, written by the finished stream.
                let pixels =
                    unsafe { std::slice::from_raw_parts(self.download.ptr.add(offset), bytes) }
                        .to_vec();
                offset += bytes;
                RenderedImage {
                    spec: job.spec,
                    width: job.width,
                    height: job.height,
                    pixels,
                }
            })
            .collect())
    }

    fn sync(&self) -> Result<(), CudaError> {
        // SAFETY: the stream belongs to the current context.
        check("cuStreamSynchronize", unsafe {
            (self.driver.cuStreamSynchronize)(self.stream)
        })
    }

    /// Queues the whole job on the stream: one upload (source and weight tables), the passes
    /// of every rendition in `order` (each from the source or from a larger rendition, as the
    /// CPU backend's filter chain says), one download. With `timer`, an
    /// event marks the start of each step.
    fn enqueue(
        &mut self,
        source: &SourceImage,
        jobs: &[PlannedPass],
        order: &[usize],
        mut timer: Option<&mut Timer>,
    ) -> Result<(), CudaError> {
        let driver = self.driver;
        let source_bytes = source.pixels.len();
        let output_bytes: usize = jobs.iter().map(PlannedPass::output_bytes).sum();
        let tables = PackedTables::pack(jobs);
        // With alpha, the premultiplied copies of renditions that others start from.
        let mut rebase_bytes = 0u64;
        let rebase_at: Vec<u64> = (0..jobs.len())
            .map(|i| {
                let at = rebase_bytes;
                if source.has_alpha && jobs.iter().any(|other| other.base == Some(i)) {
                    rebase_bytes += jobs[i].output_bytes().next_multiple_of(16) as u64;
                }
                at
            })
            .collect();

        self.source.reserve(driver, source_bytes)?;
        let scratch = jobs
            .iter()
            .map(PlannedPass::scratch_bytes)
            .max()
            .unwrap_or(0);
        self.scratch.reserve(driver, scratch)?;
        let reduced = jobs
            .iter()
            .map(PlannedPass::reduced_bytes)
            .max()
            .unwrap_or(0);
        self.reduced.reserve(driver, reduced)?;
        self.output.reserve(driver, output_bytes)?;
        self.rebase.reserve(driver, rebase_bytes as usize)?;
        self.tables.reserve(driver, tables.bytes.len())?;
        self.upload
            .reserve(driver, source_bytes + tables.bytes.len())?;
        self.download.reserve(driver, output_bytes)?;

        let stream = self.stream;
        // Marks the start of a step and the bytes it must at least read and write.
        let mut step = |step: Step, bytes: usize| match timer.as_deref_mut() {
            Some(timer) => timer.record(stream, step, bytes),
            None => Ok(()),
        };
        // SAFETY: every pointer below is inside a buffer reserved above for this job; the one
        // stream orders the copies and launches, and the caller synchronises before reading.
        unsafe {
            let staged = self.upload.ptr;
            ptr::copy_nonoverlapping(source.pixels.as_ptr(), staged, source_bytes);
            let tables_staged = staged.add(source_bytes);
            ptr::copy_nonoverlapping(tables.bytes.as_ptr(), tables_staged, tables.bytes.len());
            step(Step::Upload, source_bytes + tables.bytes.len())?;
            self.copy_in(self.source.ptr, staged, source_bytes)?;
            self.copy_in(self.tables.ptr, tables_staged, tables.bytes.len())?;

            // Same-size renditions are copies of the untouched source, taken before it is
            // premultiplied: the CPU backend returns such a source as it is.
            let mut offset = 0u64;
            let outputs: Vec<CuDevicePtr> = jobs
                .iter()
                .map(|job| {
                    let at = self.output.ptr + offset;
                    offset += job.output_bytes() as u64;
                    at
                })
                .collect();
            for (job, &out) in jobs.iter().zip(&outputs) {
                if job.tables.is_none() && !job.spec.rendition.is_blurred() {
                    self.copy_device(out, self.source.ptr, source_bytes)?;
                }
            }
            if source.has_alpha {
                step(Step::Premultiply, 2 * source_bytes)?;
                self.launch_flat(
                    self.kernels.premultiply,
                    self.source.ptr,
                    source.width * source.height,
                )?;
            }
            for &i in order {
                let (job, out, at) = (&jobs[i], outputs[i], &tables.at[i]);
                let blurred = job.spec.rendition.is_blurred();
                let resampled_into = if blurred { self.reduced.ptr } else { out };
                let base = match job.base {
                    None => self.source.ptr,
                    Some(b) if source.has_alpha => self.rebase.ptr + rebase_at[b],
                    Some(b) => outputs[b],
                };
                match at.passes {
                    Some((x, y)) => {
                        let input = job.from.0 as usize * job.from.1 as usize * 4;
                        let between = job.from.0 as usize * job.height as usize * 4;
                        step(Step::ResampleCols, input + between)?;
                        self.launch_cols(job, base, self.tables.ptr, y)?;
                        step(Step::ResampleRows, between + job.output_bytes())?;
                        self.launch_rows(job, self.tables.ptr, x, resampled_into)?;
                    }
                    None if blurred => {
                        self.copy_device(resampled_into, self.source.ptr, source_bytes)?
                    }
                    None => continue,
                }
                if let Some(taps) = at.taps {
                    self.copy_device(
                        self.kernels.gauss_taps,
                        self.tables.ptr + taps.offset,
                        taps.bytes,
                    )?;
                    step(Step::BlurRows, 5 * job.output_bytes())?;
                    self.launch_blur(
                        self.kernels.blur_rows,
                        job,
                        taps.radius,
                        self.reduced.ptr,
                        self.scratch.ptr,
                    )?;
                    step(Step::BlurCols, 5 * job.output_bytes())?;
                    self.launch_blur(
                        self.kernels.blur_cols,
                        job,
                        taps.radius,
                        self.scratch.ptr,
                        out,
                    )?;
                }
                if source.has_alpha {
                    let pixels = job.width * job.height;
                    step(Step::Unpremultiply, 2 * job.output_bytes())?;
                    self.launch_flat(self.kernels.unpremultiply, out, pixels)?;
                    // A rendition that smaller ones start from is premultiplied again from its
                    // final bytes, as the CPU backend does when it resamples it.
                    if jobs.iter().any(|other| other.base == Some(i)) {
                        let copy = self.rebase.ptr + rebase_at[i];
                        self.copy_device(copy, out, job.output_bytes())?;
                        step(Step::Premultiply, 2 * job.output_bytes())?;
                        self.launch_flat(self.kernels.premultiply, copy, pixels)?;
                    }
                }
            }
            step(Step::Download, output_bytes)?;
            check(
                "cuMemcpyDtoHAsync_v2",
                (driver.cuMemcpyDtoHAsync_v2)(
                    self.download.ptr.cast(),
                    self.output.ptr,
                    output_bytes,
                    stream,
                ),
            )?;
            step(Step::End, 0)?;
        }
        Ok(())
    }

    /// # Safety
    /// `from` is pinned host memory of `bytes` that stays untouched until the stream is synced.
    unsafe fn copy_in(
        &self,
        to: CuDevicePtr,
        from: *const u8,
        bytes: usize,
    ) -> Result<(), CudaError> {
        if bytes == 0 {
            return Ok(());
        }
        // SAFETY: see the caller's contract.
        check("cuMemcpyHtoDAsync_v2", unsafe {
            (self.driver.cuMemcpyHtoDAsync_v2)(to, from.cast(), bytes, self.stream)
        })
    }

    /// # Safety
    /// Both ranges are device memory of this context, `bytes` long.
    unsafe fn copy_device(
        &self,
        to: CuDevicePtr,
        from: CuDevicePtr,
        bytes: usize,
    ) -> Result<(), CudaError> {
        // SAFETY: see the caller's contract.
        check("cuMemcpyDtoDAsync_v2", unsafe {
            (self.driver.cuMemcpyDtoDAsync_v2)(to, from, bytes, self.stream)
        })
    }

    /// Launches an elementwise kernel `(uchar4 *pixels, int count)`.
    ///
    /// # Safety
    /// `pixels` points at `count` RGBA8 pixels on the device.
    unsafe fn launch_flat(
        &self,
        kernel: CuFunction,
        pixels: CuDevicePtr,
        count: u32,
    ) -> Result<(), CudaError> {
        let mut pixels = pixels;
        let mut count = count as c_int;
        let blocks = (count as u32).div_ceil(256);
        // SAFETY: the arguments match the kernel's parameters.
        unsafe {
            self.launch(
                kernel,
                (blocks, 1),
                (256, 1),
                &mut [arg(&mut pixels), arg(&mut count)],
            )
        }
    }

    /// The vertical resampling pass, first: `base` → scratch (input width × output height).
    ///
    /// # Safety
    /// `base` holds this job's input image (the source or a larger rendition, premultiplied)
    /// and `tables` its weight tables.
    unsafe fn launch_cols(
        &self,
        job: &PlannedPass,
        base: CuDevicePtr,
        tables: CuDevicePtr,
        y: TableAt,
    ) -> Result<(), CudaError> {
        let pass = ResamplePass {
            kernel: self.kernels.resample_cols,
            src: base,
            src_size: job.from,
            dst: self.scratch.ptr,
            dst_size: (job.from.0, job.height),
        };
        // SAFETY: as the caller promises; the scratch buffer was reserved for this job.
        unsafe { self.launch_resample(pass, tables, y, job.height) }
    }

    /// The horizontal resampling pass: scratch → `target` (the rendition's size).
    ///
    /// # Safety
    /// The scratch buffer holds this job's column pass; `target` has room for the output.
    unsafe fn launch_rows(
        &self,
        job: &PlannedPass,
        tables: CuDevicePtr,
        x: TableAt,
        target: CuDevicePtr,
    ) -> Result<(), CudaError> {
        let pass = ResamplePass {
            kernel: self.kernels.resample_rows,
            src: self.scratch.ptr,
            src_size: (job.from.0, job.height),
            dst: target,
            dst_size: (job.width, job.height),
        };
        // SAFETY: as the caller promises.
        unsafe { self.launch_resample(pass, tables, x, job.width) }
    }

    /// Launches one of the resampling kernels, which share their parameters: the source, its
    /// width and height, the destination, the destination's side along the filtered axis, and
    /// the table. One thread per output pixel.
    ///
    /// # Safety
    /// The pass's buffers hold its sizes; `table` lies inside `tables`.
    unsafe fn launch_resample(
        &self,
        pass: ResamplePass,
        tables: CuDevicePtr,
        table: TableAt,
        along: u32,
    ) -> Result<(), CudaError> {
        // Column pass: (src, width, src height, dst, dst height, …); row pass: (src, src width,
        // height, dst, dst width, …): the source's width and height, then the filtered side.
        let (mut src, mut width, mut height) =
            (pass.src, pass.src_size.0 as c_int, pass.src_size.1 as c_int);
        let (mut dst, mut along) = (pass.dst, along as c_int);
        let (mut starts, mut weights, mut taps) =
            (tables + table.starts, tables + table.weights, table.taps);
        let grid = (pass.dst_size.0.div_ceil(32), pass.dst_size.1.div_ceil(8));
        let mut args = [
            arg(&mut src),
            arg(&mut width),
            arg(&mut height),
            arg(&mut dst),
            arg(&mut along),
            arg(&mut starts),
            arg(&mut weights),
            arg(&mut taps),
        ];
        // SAFETY: the arguments match both resampling kernels.
        unsafe { self.launch(pass.kernel, grid, (32, 8), &mut args) }
    }

    /// One pass of the Gaussian: `iw_blur_rows` (tiles along x) or `iw_blur_cols` (along y).
    ///
    /// # Safety
    /// `src` and `dst` hold the rendition's size in the pass's element type; the taps are in
    /// constant memory.
    unsafe fn launch_blur(
        &self,
        kernel: CuFunction,
        job: &PlannedPass,
        radius: c_int,
        src: CuDevicePtr,
        dst: CuDevicePtr,
    ) -> Result<(), CudaError> {
        let (mut src, mut dst, mut radius) = (src, dst, radius);
        let (mut width, mut height) = (job.width as c_int, job.height as c_int);
        let (grid, block) = if kernel == self.kernels.blur_rows {
            (
                (
                    job.width.div_ceil(BLUR_TILE),
                    job.height.div_ceil(BLUR_LINES),
                ),
                (BLUR_TILE, BLUR_LINES),
            )
        } else {
            (
                (
                    job.width.div_ceil(BLUR_LINES),
                    job.height.div_ceil(BLUR_TILE),
                ),
                (BLUR_LINES, BLUR_TILE),
            )
        };
        let mut args = [
            arg(&mut src),
            arg(&mut dst),
            arg(&mut width),
            arg(&mut height),
            arg(&mut radius),
        ];
        // SAFETY: the arguments match both blur kernels.
        unsafe { self.launch(kernel, grid, block, &mut args) }
    }

    /// # Safety
    /// `args` point at values matching the kernel's parameters, in order.
    unsafe fn launch(
        &self,
        kernel: CuFunction,
        grid: (u32, u32),
        block: (u32, u32),
        args: &mut [*mut c_void],
    ) -> Result<(), CudaError> {
        // SAFETY: see the caller's contract.
        check("cuLaunchKernel", unsafe {
            (self.driver.cuLaunchKernel)(
                kernel,
                grid.0.max(1) as c_uint,
                grid.1.max(1) as c_uint,
                1,
                block.0,
                block.1,
                1,
                0,
                self.stream,
                args.as_mut_ptr(),
                ptr::null_mut(),
            )
        })
    }

    fn profile(
        &mut self,
        source: &SourceImage,
        plan: &[RenditionSpec],
        rounds: u32,
    ) -> Result<Profile, CudaError> {
        let (jobs, order) = PlannedPass::plan(source, plan);
        let mut timer = Timer::new(self.driver)?;
        let mut totals = Profile::default();
        for _ in 0..rounds.max(1) {
            timer.clear();
            self.enqueue(source, &jobs, &order, Some(&mut timer))?;
            self.sync()?;
            let share = 1.0 / rounds.max(1) as f64;
            for (step, ms, bytes) in timer.elapsed()? {
                *totals.ms.entry(step.name()).or_default() += ms as f64 * share;
                *totals.bytes.entry(step.name()).or_default() += bytes as f64 * share;
            }
        }
        totals.source_bytes = source.pixels.len();
        totals.output_bytes = jobs.iter().map(PlannedPass::output_bytes).sum();
        Ok(totals)
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        self.release_buffers();
        // SAFETY: handles created by Gpu::open on this thread, not used after this.
        unsafe {
            (self.driver.cuStreamDestroy_v2)(self.stream);
            (self.driver.cuModuleUnload)(self.module);
            (self.driver.cuDevicePrimaryCtxRelease_v2)(self.device);
        }
    }
}

fn arg<T>(value: &mut T) -> *mut c_void {
    (value as *mut T).cast()
}

/// The buffers and sizes of one resampling launch.
#[derive(Clone, Copy, Debug)]
struct ResamplePass {
    kernel: CuFunction,
    src: CuDevicePtr,
    src_size: (u32, u32),
    dst: CuDevicePtr,
    dst_size: (u32, u32),
}

/// Where one pass's table sits in the packed table buffer.
#[derive(Clone, Copy, Debug)]
struct TableAt {
    starts: u64,
    weights: u64,
    taps: c_int,
}

/// Where a blur's Gaussian taps sit in the packed table buffer.
#[derive(Clone, Copy, Debug)]
struct TapsAt {
    offset: u64,
    bytes: usize,
    radius: c_int,
}

/// The tables of one rendition.
struct RenditionTables {
    passes: Option<(TableAt, TableAt)>,
    taps: Option<TapsAt>,
}

/// Every weight table and Gaussian of a job in one buffer, uploaded with the source.
struct PackedTables {
    bytes: Vec<u8>,
    at: Vec<RenditionTables>,
}

impl PackedTables {
    fn pack(jobs: &[PlannedPass]) -> PackedTables {
        let mut packed = PackedTables {
            bytes: Vec::new(),
            at: Vec::with_capacity(jobs.len()),
        };
        for job in jobs {
            let passes = job
                .tables
                .as_ref()
                .map(|(x, y)| (packed.push_table(x), packed.push_table(y)));
            let taps = job.spec.rendition.is_blurred().then(|| {
                let taps = ops::gaussian_kernel(job.spec.sigma);
                let offset = packed.push(taps.iter().flat_map(|t| t.to_ne_bytes()));
                TapsAt {
                    offset,
                    bytes: taps.len() * 4,
                    radius: (taps.len() / 2) as c_int,
                }
            });
            packed.at.push(RenditionTables { passes, taps });
        }
        packed
    }

    /// Appends 16-byte aligned data; returns its offset.
    fn push(&mut self, data: impl IntoIterator<Item = u8>) -> u64 {
        self.bytes.resize(self.bytes.len().next_multiple_of(16), 0);
        let offset = self.bytes.len() as u64;
        self.bytes.extend(data);
        offset
    }

    fn push_table(&mut self, c: &Coefficients) -> TableAt {
        TableAt {
            starts: self.push(c.starts.iter().flat_map(|s| s.to_ne_bytes())),
            weights: self.push(c.weights.iter().flat_map(|w| w.to_ne_bytes())),
            taps: c.taps as c_int,
        }
    }
}

/// One rendition as the device computes it.
struct PlannedPass {
    spec: RenditionSpec,
    width: u32,
    height: u32,
    /// The rendition (plan index) this one is resampled from, or `None` for the source.
    base: Option<usize>,
    /// The size of what it is resampled from.
    from: (u32, u32),
    /// Horizontal and vertical weight tables; `None` when the size does not change.
    tables: Option<(Coefficients, Coefficients)>,
}

impl PlannedPass {
    /// The passes of `plan` in plan order, and the order they must run in: the CPU backend's
    /// filter chain ([`cascade`]), so that both backends resample the same images.
    fn plan(source: &SourceImage, plan: &[RenditionSpec]) -> (Vec<PlannedPass>, Vec<usize>) {
        let steps = cascade(source.full_size(), plan);
        let mut passes: Vec<Option<PlannedPass>> = plan.iter().map(|_| None).collect();
        for step in &steps {
            let spec = plan[step.index];
            // A rendition of the source's own size is a copy of the source: start from the
            // source instead.
            let base = step
                .base
                .filter(|&b| passes[b].as_ref().is_some_and(|p| p.tables.is_some()));
            let from = match base.and_then(|b| passes[b].as_ref()) {
                Some(base) => (base.width, base.height),
                None => (source.width, source.height),
            };
            let (width, height) = step.size;
            let filter = if spec.rendition.is_blurred() {
                Filter::Box
            } else {
                Filter::Lanczos3
            };
            let tables = ((width, height) != from).then(|| {
                (
                    Coefficients::new(from.0, width, filter),
                    Coefficients::new(from.1, height, filter),
                )
            });
            passes[step.index] = Some(PlannedPass {
                spec,
                width,
                height,
                base,
                from,
                tables,
            });
        }
        let order = steps.iter().map(|step| step.index).collect();
        (
            passes
                .into_iter()
                .map(|p| p.expect("every rendition is planned"))
                .collect(),
            order,
        )
    }

    fn pixels(&self) -> usize {
        self.width as usize * self.height as usize
    }

    fn output_bytes(&self) -> usize {
        self.pixels() * 4
    }

    /// The intermediate: bytes of the resampling column pass (input width × output height),
    /// float4 of the blur's row pass (output size).
    fn scratch_bytes(&self) -> usize {
        let resample = match self.tables {
            Some(_) => self.from.0 as usize * self.height as usize * 4,
            None => 0,
        };
        let blur = if self.spec.rendition.is_blurred() {
            self.pixels() * 16
        } else {
            0
        };
        resample.max(blur)
    }

    /// The box reduction the blur starts from.
    fn reduced_bytes(&self) -> usize {
        if self.spec.rendition.is_blurred() {
            self.output_bytes()
        } else {
            0
        }
    }
}

impl Kernels {
    /// # Safety
    /// `module` is a loaded module of the current context.
    unsafe fn find(driver: &Driver, module: CuModule) -> Result<Kernels, CudaError> {
        let function = |name: &CStr| {
            let mut function = ptr::null_mut();
            // SAFETY: a NUL-terminated name and an out-pointer to a local.
            check("cuModuleGetFunction", unsafe {
                (driver.cuModuleGetFunction)(&mut function, module, name.as_ptr())
            })
            .map(|()| function)
        };
        let mut taps = 0;
        let mut bytes = 0;
        // SAFETY: as above.
        check("cuModuleGetGlobal_v2", unsafe {
            (driver.cuModuleGetGlobal_v2)(&mut taps, &mut bytes, module, c"iw_gauss_taps".as_ptr())
        })?;
        debug_assert_eq!(bytes, (2 * MAX_BLUR_RADIUS + 1) * 4);
        Ok(Kernels {
            premultiply: function(c"iw_premultiply")?,
            unpremultiply: function(c"iw_unpremultiply")?,
            resample_rows: function(c"iw_resample_rows")?,
            resample_cols: function(c"iw_resample_cols")?,
            blur_rows: function(c"iw_blur_rows")?,
            blur_cols: function(c"iw_blur_cols")?,
            gauss_taps: taps,
        })
    }
}

/// The new size of a buffer of `current` bytes that must hold `needed`: at least half again
/// as large, so that a run of slowly growing images does not reallocate every time, in whole
/// 64 KiB.
fn grown(current: usize, needed: usize) -> usize {
    needed.max(current + current / 2).next_multiple_of(1 << 16)
}

impl DeviceBuffer {
    fn empty() -> DeviceBuffer {
        DeviceBuffer { ptr: 0, bytes: 0 }
    }

    /// Grows the allocation to at least `bytes` (see [`grown`]). The contents are not kept.
    fn reserve(&mut self, driver: &Driver, bytes: usize) -> Result<(), CudaError> {
        if bytes <= self.bytes {
            return Ok(());
        }
        let want = grown(self.bytes, bytes);
        self.free(driver);
        let mut ptr = 0;
        // SAFETY: out-pointer to a local; the context is current.
        check("cuMemAlloc_v2", unsafe {
            (driver.cuMemAlloc_v2)(&mut ptr, want)
        })?;
        *self = DeviceBuffer { ptr, bytes: want };
        Ok(())
    }

    fn free(&mut self, driver: &Driver) {
        if self.ptr != 0 {
            // SAFETY: an allocation of this context, not used after this.
            unsafe { (driver.cuMemFree_v2)(self.ptr) };
        }
        *self = DeviceBuffer::empty();
    }
}

impl PinnedBuffer {
    fn empty() -> PinnedBuffer {
        PinnedBuffer {
            ptr: ptr::null_mut(),
            bytes: 0,
        }
    }

    fn reserve(&mut self, driver: &Driver, bytes: usize) -> Result<(), CudaError> {
        if bytes <= self.bytes {
            return Ok(());
        }
        let want = grown(self.bytes, bytes);
        self.free(driver);
        let mut ptr = ptr::null_mut();
        // SAFETY: out-pointer to a local; the context is current.
        check("cuMemAllocHost_v2", unsafe {
            (driver.cuMemAllocHost_v2)(&mut ptr, want)
        })?;
        *self = PinnedBuffer {
            ptr: ptr.cast(),
            bytes: want,
        };
        Ok(())
    }

    fn free(&mut self, driver: &Driver) {
        if !self.ptr.is_null() {
            // SAFETY: a pinned allocation of this context, not used after this.
            unsafe { (driver.cuMemFreeHost)(self.ptr.cast()) };
        }
        *self = PinnedBuffer::empty();
    }
}

/// The kinds of work a job queues, for the kernel profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Upload,
    Premultiply,
    ResampleRows,
    ResampleCols,
    BlurRows,
    BlurCols,
    Unpremultiply,
    Download,
    End,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::Upload => "upload",
            Step::Premultiply => "premultiply",
            Step::ResampleRows => "resample_rows",
            Step::ResampleCols => "resample_cols",
            Step::BlurRows => "blur_rows",
            Step::BlurCols => "blur_cols",
            Step::Unpremultiply => "unpremultiply",
            Step::Download => "download",
            Step::End => "end",
        }
    }
}

/// Per step kind, averaged over the profiled rounds: milliseconds, and the bytes the step must
/// at least read and write (each input and output once), for bandwidth figures.
#[derive(Clone, Debug, Default)]
pub struct Profile {
    pub ms: std::collections::BTreeMap<&'static str, f64>,
    pub bytes: std::collections::BTreeMap<&'static str, f64>,
    pub source_bytes: usize,
    pub output_bytes: usize,
}

/// Events recorded on the stream between steps.
struct Timer {
    driver: &'static Driver,
    events: Vec<(Step, usize, driver::CuEvent)>,
    used: usize,
}

impl Timer {
    fn new(driver: &'static Driver) -> Result<Timer, CudaError> {
        Ok(Timer {
            driver,
            events: Vec::new(),
            used: 0,
        })
    }

    fn clear(&mut self) {
        self.used = 0;
    }

    fn record(&mut self, stream: CuStream, step: Step, bytes: usize) -> Result<(), CudaError> {
        if self.used == self.events.len() {
            let mut event = ptr::null_mut();
            // SAFETY: out-pointer to a local; default event flags.
            check("cuEventCreate", unsafe {
                (self.driver.cuEventCreate)(&mut event, 0)
            })?;
            self.events.push((step, bytes, event));
        }
        self.events[self.used].0 = step;
        self.events[self.used].1 = bytes;
        // SAFETY: an event and a stream of the current context.
        check("cuEventRecord", unsafe {
            (self.driver.cuEventRecord)(self.events[self.used].2, stream)
        })?;
        self.used += 1;
        Ok(())
    }

    /// Time from each recorded step to the next.
    fn elapsed(&self) -> Result<Vec<(Step, f32, usize)>, CudaError> {
        let events = &self.events[..self.used];
        let mut out = Vec::new();
        for pair in events.windows(2) {
            let mut ms = 0f32;
            // SAFETY: recorded events of the finished stream.
            unsafe {
                check(
                    "cuEventSynchronize",
                    (self.driver.cuEventSynchronize)(pair[1].2),
                )?;
                check(
                    "cuEventElapsedTime",
                    (self.driver.cuEventElapsedTime)(&mut ms, pair[0].2, pair[1].2),
                )?;
            }
            out.push((pair[0].0, ms, pair[0].1));
        }
        Ok(out)
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        for (_, _, event) in &self.events {
            // SAFETY: events created by this timer.
            unsafe { (self.driver.cuEventDestroy_v2)(*event) };
        }
    }
}

/// One entry of a fatbin: PTX or SASS, and for which architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FatbinEntry {
    pub kind: FatbinKind,
    pub arch: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FatbinKind {
    Ptx,
    Sass,
}

/// Lists the entries of a fatbin image: a header (magic 0xBA55ED50, version, header size, size
/// of the entries) followed by entries, each with its own header of kind (1 PTX, 2 ELF), header
/// size, payload size and, at byte 28, the architecture number.
pub fn fatbin_entries(bytes: &[u8]) -> Result<Vec<FatbinEntry>, String> {
    let u16_at = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |at: usize| {
        bytes
            .get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    let short = || "fatbin is truncated".to_owned();
    if u32_at(0).ok_or_else(short)? != 0xBA55_ED50 {
        return Err("not a fatbin (bad magic)".into());
    }
    let header = u16_at(6).ok_or_else(short)? as usize;
    let size = u64_at(8).ok_or_else(short)? as usize;
    let end = header
        .checked_add(size)
        .filter(|&end| end <= bytes.len())
        .ok_or_else(short)?;
    let mut at = header;
    let mut entries = Vec::new();
    while at < end {
        let kind = match u16_at(at).ok_or_else(short)? {
            1 => FatbinKind::Ptx,
            2 => FatbinKind::Sass,
            other => return Err(format!("unknown fatbin entry kind {other}")),
        };
        let entry_header = u32_at(at + 4).ok_or_else(short)? as usize;
        let payload = u64_at(at + 8).ok_or_else(short)? as usize;
        let arch = u32_at(at + 28).ok_or_else(short)?;
        entries.push(FatbinEntry { kind, arch });
        at = at
            .checked_add(entry_header)
            .and_then(|a| a.checked_add(payload))
            .ok_or_else(short)?;
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_fatbin_holds_sass_for_every_built_arch_and_ptx_for_the_lowest() {
        let entries = fatbin_entries(fatbin()).unwrap();
        for arch in BUILT_ARCHS.split(',') {
            let arch: u32 = arch.parse().unwrap();
            assert!(
                entries.contains(&FatbinEntry {
                    kind: FatbinKind::Sass,
                    arch
                }),
                "no SASS for sm_{arch} in {entries:?}"
            );
        }
        let ptx: u32 = PTX_ARCH.parse().unwrap();
        assert!(
            entries.contains(&FatbinEntry {
                kind: FatbinKind::Ptx,
                arch: ptx
            }),
            "{entries:?}"
        );
        assert_eq!(
            entries.iter().filter(|e| e.kind == FatbinKind::Ptx).count(),
            1,
            "PTX only for the lowest architecture: {entries:?}"
        );
    }

    #[test]
    fn buffers_grow_by_half_again_in_whole_64_kib() {
        assert_eq!(grown(0, 1), 1 << 16);
        assert_eq!(grown(1 << 20, (1 << 20) + 1), 3 << 19);
        assert_eq!(grown(1 << 20, 8 << 20), 8 << 20);
    }

    #[test]
    fn fatbin_parser_refuses_what_is_not_one() {
        assert!(fatbin_entries(b"\x7fELF\x02\x01\x01\x00").is_err());
        assert!(
            fatbin_entries(&fatbin()[..40]).is_err(),
            "a truncated fatbin"
        );
    }
}
