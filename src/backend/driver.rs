//! The part of the CUDA driver API the GPU backend uses, loaded from `libcuda.so.1` at run time.
//!
//! The library is opened with `dlopen` rather than linked, so a binary built with the `cuda`
//! feature still starts on a host without the NVIDIA driver: `--backend auto` then says why and
//! uses the CPU, and `--backend cuda` is refused with the loader's reason. Results are kept as
//! the raw `CUresult` numbers, so a code newer than this file is still reported by name (the
//! driver's own `cuGetErrorName`) instead of being folded into "unknown".
//!
//! Only the backend thread calls into this module.

use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
use std::fmt;
use std::sync::OnceLock;

pub type CuResult = c_uint;
pub type CuDevice = c_int;
pub type CuDevicePtr = u64;
pub type CuContext = *mut c_void;
pub type CuModule = *mut c_void;
pub type CuFunction = *mut c_void;
pub type CuStream = *mut c_void;
pub type CuEvent = *mut c_void;

pub const SUCCESS: CuResult = 0;
pub const ERROR_OUT_OF_MEMORY: CuResult = 2;
pub const ERROR_NO_DEVICE: CuResult = 100;

pub const ATTRIBUTE_MULTIPROCESSOR_COUNT: c_int = 16;
pub const ATTRIBUTE_MEMORY_CLOCK_RATE: c_int = 36;
pub const ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH: c_int = 37;
pub const ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: c_int = 75;
pub const ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: c_int = 76;

/// A failed driver call: which call, and the driver's code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CudaError {
    pub call: &'static str,
    pub code: CuResult,
}

impl CudaError {
    /// The driver's name for the code (`CUDA_ERROR_NO_DEVICE`), or the number.
    pub fn name(&self) -> String {
        driver_text(self.code, |d| d.cuGetErrorName)
            .unwrap_or_else(|| format!("CUresult {}", self.code))
    }

    /// The driver's sentence for the code, when it has one.
    pub fn description(&self) -> Option<String> {
        driver_text(self.code, |d| d.cuGetErrorString)
    }

    /// Whether the context is unusable after this error: the driver documents these codes as
    /// leaving the context in an error state that only a reset clears.
    pub fn is_sticky(&self) -> bool {
        matches!(
            self.code,
            214 // ECC uncorrectable
            | 700 // illegal address
            | 702 // launch timeout
            | 714 // hardware stack error
            | 715 // illegal instruction
            | 716 // misaligned address
            | 717 // invalid address space
            | 718 // invalid program counter
            | 719 // launch failed
            | 999 // unknown
        )
    }

    pub fn is_out_of_memory(&self) -> bool {
        self.code == ERROR_OUT_OF_MEMORY
    }
}

impl fmt::Display for CudaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: {} ({})", self.call, self.name(), self.code)?;
        if let Some(text) = self.description() {
            write!(f, ": {text}")?;
        }
        Ok(())
    }
}

fn driver_text(
    code: CuResult,
    pick: impl Fn(&Driver) -> unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult,
) -> Option<String> {
    let driver = DRIVER.get()?.as_ref().ok()?;
    let mut text: *const c_char = std::ptr::null();
    // SAFETY: the driver writes a pointer to a static string, or fails for an unknown code.
    let result = unsafe { pick(driver)(code, &mut text) };
    if result != SUCCESS || text.is_null() {
        return None;
    }
    // SAFETY: a non-null result points at a NUL-terminated static string of the driver.
    Some(
        unsafe { CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// Turns a driver result into a `Result`, naming the call.
pub fn check(call: &'static str, code: CuResult) -> Result<(), CudaError> {
    if code == SUCCESS {
        Ok(())
    } else {
        Err(CudaError { call, code })
    }
}

macro_rules! driver_api {
    ($($name:ident : fn($($arg:ty),*);)*) => {
        /// Entry points of the driver library.
        #[allow(non_snake_case)]
        pub struct Driver {
            $(pub $name: unsafe extern "C" fn($($arg),*) -> CuResult,)*
        }

        impl Driver {
            /// # Safety
            /// `library` is a handle from `dlopen` of the CUDA driver library, which stays open.
            unsafe fn resolve(library: *mut c_void) -> Result<Driver, String> {
                Ok(Driver {
                    $($name: {
                        let symbol = concat!(stringify!($name), "\0");
                        // SAFETY: dlsym with a NUL-terminated name on an open handle.
                        let address = unsafe { libc::dlsym(library, symbol.as_ptr().cast()) };
                        if address.is_null() {
                            return Err(format!(
                                "the CUDA driver library has no {} (driver too old?)",
                                stringify!($name)
                            ));
                        }
                        // SAFETY: the symbol is the driver function of this signature.
                        unsafe { std::mem::transmute::<*mut c_void, unsafe extern "C" fn($($arg),*) -> CuResult>(address) }
                    },)*
                })
            }
        }
    };
}

driver_api! {
    cuInit: fn(c_uint);
    cuDriverGetVersion: fn(*mut c_int);
    cuGetErrorName: fn(CuResult, *mut *const c_char);
    cuGetErrorString: fn(CuResult, *mut *const c_char);
    cuDeviceGetCount: fn(*mut c_int);
    cuDeviceGet: fn(*mut CuDevice, c_int);
    cuDeviceGetName: fn(*mut c_char, c_int, CuDevice);
    cuDeviceGetAttribute: fn(*mut c_int, c_int, CuDevice);
    cuDeviceTotalMem_v2: fn(*mut usize, CuDevice);
    cuDevicePrimaryCtxRetain: fn(*mut CuContext, CuDevice);
    cuDevicePrimaryCtxRelease_v2: fn(CuDevice);
    cuDevicePrimaryCtxReset_v2: fn(CuDevice);
    cuCtxSetCurrent: fn(CuContext);
    cuModuleLoadData: fn(*mut CuModule, *const c_void);
    cuModuleUnload: fn(CuModule);
    cuModuleGetFunction: fn(*mut CuFunction, CuModule, *const c_char);
    cuModuleGetGlobal_v2: fn(*mut CuDevicePtr, *mut usize, CuModule, *const c_char);
    cuStreamCreate: fn(*mut CuStream, c_uint);
    cuStreamDestroy_v2: fn(CuStream);
    cuStreamSynchronize: fn(CuStream);
    cuMemAlloc_v2: fn(*mut CuDevicePtr, usize);
    cuMemFree_v2: fn(CuDevicePtr);
    cuMemAllocHost_v2: fn(*mut *mut c_void, usize);
    cuMemFreeHost: fn(*mut c_void);
    cuMemGetInfo_v2: fn(*mut usize, *mut usize);
    cuMemcpyHtoDAsync_v2: fn(CuDevicePtr, *const c_void, usize, CuStream);
    cuMemcpyDtoHAsync_v2: fn(*mut c_void, CuDevicePtr, usize, CuStream);
    cuMemcpyDtoDAsync_v2: fn(CuDevicePtr, CuDevicePtr, usize, CuStream);
    cuLaunchKernel: fn(
        CuFunction, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, CuStream,
        *mut *mut c_void, *mut *mut c_void
    );
    cuEventCreate: fn(*mut CuEvent, c_uint);
    cuEventRecord: fn(CuEvent, CuStream);
    cuEventSynchronize: fn(CuEvent);
    cuEventElapsedTime: fn(*mut f32, CuEvent, CuEvent);
    cuEventDestroy_v2: fn(CuEvent);
}

// SAFETY: a table of function pointers into a library that is never closed.
unsafe impl Send for Driver {}
unsafe impl Sync for Driver {}

static DRIVER: OnceLock<Result<Driver, String>> = OnceLock::new();

/// The library name the loader is asked for: the driver's soname, present with any NVIDIA
/// driver installation (Debian's libcuda1 or NVIDIA's own packages).
pub const LIBRARY: &str = "libcuda.so.1";

/// The driver library, opened on first use; the error says why it cannot be used.
pub fn driver() -> Result<&'static Driver, String> {
    DRIVER
        .get_or_init(|| {
            let name = c"libcuda.so.1";
            // SAFETY: dlopen with a NUL-terminated name; the handle is never closed.
            let library = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
            if library.is_null() {
                // SAFETY: dlerror returns the loader's message for the failed dlopen, if any.
                let reason = unsafe { libc::dlerror() };
                let reason = if reason.is_null() {
                    "unknown loader error".to_owned()
                } else {
                    // SAFETY: non-null dlerror results are NUL-terminated strings.
                    unsafe { CStr::from_ptr(reason) }
                        .to_string_lossy()
                        .into_owned()
                };
                return Err(format!(
                    "cannot load the NVIDIA driver library {LIBRARY} ({reason}); install the \
                     NVIDIA driver (Debian's libcuda1 or NVIDIA's driver packages)"
                ));
            }
            // SAFETY: the handle is the driver library and is never closed.
            unsafe { Driver::resolve(library) }
        })
        .as_ref()
        .map_err(Clone::clone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sticky_and_out_of_memory_codes_are_told_apart() {
        let err = |code| CudaError {
            call: "cuLaunchKernel",
            code,
        };
        assert!(err(700).is_sticky());
        assert!(err(719).is_sticky());
        assert!(!err(2).is_sticky());
        assert!(err(2).is_out_of_memory());
        assert!(!err(1).is_sticky() && !err(1).is_out_of_memory());
    }

    #[test]
    fn an_error_names_its_call_and_code_even_without_the_driver() {
        let text = CudaError {
            call: "cuMemAlloc_v2",
            code: 2,
        }
        .to_string();
        assert!(text.starts_with("cuMemAlloc_v2 failed: "), "{text}");
        assert!(text.contains("(2)"), "{text}");
    }
}
