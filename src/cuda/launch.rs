//! Loading the compiled kernel into a device's primary context (the one PyTorch uses) and
//! launching it on a caller-given stream, through the CUDA driver API.
//!
//! No device-wide synchronisation anywhere: a launch is queued on the stream PyTorch reports as
//! current, so it orders with the surrounding PyTorch work, composes with other streams, and is
//! recorded by CUDA graph capture like any PyTorch kernel.
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::sys::{self as cu, CUcontext, CUdevice_attribute, CUfunction, CUmodule, CUresult, CUstream};

use super::{compile, supported_archs, target_for, Target, KERNEL_NAMES};
use crate::error::{Error, Result};

/// Threads per block; must equal `BLOCK` in logps.cu.
pub const BLOCK_THREADS: u32 = 256;

/// Whether the CUDA driver library (libcuda) can be loaded in this process.
pub fn driver_available() -> bool {
    // SAFETY: only tries to dlopen the library; no driver function is called.
    std::panic::catch_unwind(|| unsafe { cu::is_culib_present() }).unwrap_or(false)
}

fn check(status: CUresult, call: &str) -> Result<()> {
    if status == CUresult::CUDA_SUCCESS {
        return Ok(());
    }
    let mut text: *const std::ffi::c_char = std::ptr::null();
    // SAFETY: cuGetErrorString writes a pointer to a static string (or leaves it null).
    let detail = unsafe {
        if cu::cuGetErrorString(status, &mut text) == CUresult::CUDA_SUCCESS && !text.is_null() {
            std::ffi::CStr::from_ptr(text).to_string_lossy().into_owned()
        } else {
            format!("{status:?}")
        }
    };
    Err(Error::runtime(format!("CUDA driver call {call} failed: {detail}")))
}

/// Makes a context current on this thread for the guard's lifetime.
struct ContextGuard;

impl ContextGuard {
    fn push(context: CUcontext) -> Result<Self> {
        // SAFETY: `context` is a retained primary context.
        check(unsafe { cu::cuCtxPushCurrent_v2(context) }, "cuCtxPushCurrent")?;
        Ok(ContextGuard)
    }
}

impl Drop for ContextGuard {
    fn drop(&mut self) {
        let mut previous: CUcontext = std::ptr::null_mut();
        // SAFETY: pops the context pushed by `push` on this thread.
        unsafe { cu::cuCtxPopCurrent_v2(&mut previous) };
    }
}

/// The kernels of one device: its primary context, the loaded module and its functions (in
/// the order of `KERNEL_NAMES`, which [`Kernel::index`] follows).
pub struct DeviceKernels {
    context: CUcontext,
    _module: CUmodule,
    functions: [CUfunction; KERNEL_NAMES.len()],
}

// SAFETY: driver handles are plain identifiers, valid from any thread once created; the module is
// never unloaded (it lives as long as the process, like PyTorch's own kernels).
unsafe impl Send for DeviceKernels {}
unsafe impl Sync for DeviceKernels {}

/// Which kernel: float32/bfloat16/float16, forward or backward, for a transform of `kind`
/// (`Transform::kind`: 0 plain, 1 scale, 2 softcap).
#[derive(Clone, Copy, Debug)]
pub enum Kernel {
    Forward(ElementKind, i32),
    Backward(ElementKind, i32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElementKind {
    F32 = 0,
    Bf16 = 1,
    F16 = 2,
}

impl Kernel {
    fn index(self) -> usize {
        let (element, transform, backward) = match self {
            Kernel::Forward(e, t) => (e as usize, t as usize, 0),
            Kernel::Backward(e, t) => (e as usize, t as usize, 1),
        };
        (element * 3 + transform.min(2)) * 2 + backward
    }
}

impl DeviceKernels {
    fn load(ordinal: i32) -> Result<Self> {
        if !driver_available() {
            return Err(Error::runtime("the CUDA driver library (libcuda.so.1) cannot be loaded in this process"));
        }
        // SAFETY: driver calls with valid out-pointers; the image outlives cuModuleLoadData.
        unsafe {
            check(cu::cuInit(0), "cuInit")?;
            let mut device = 0;
            check(cu::cuDeviceGet(&mut device, ordinal), "cuDeviceGet")?;
            let (mut major, mut minor) = (0, 0);
            check(
                cu::cuDeviceGetAttribute(
                    &mut major,
                    CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                    device,
                ),
                "cuDeviceGetAttribute",
            )?;
            check(
                cu::cuDeviceGetAttribute(
                    &mut minor,
                    CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                    device,
                ),
                "cuDeviceGetAttribute",
            )?;
            if major < 8 {
                return Err(Error::runtime(format!(
                    "the kernel needs compute capability 8.0 or newer (bfloat16 conversions), cuda:{ordinal} has {major}.{minor}"
                )));
            }
            let target = target_for(10 * major + minor, &supported_archs()?)?;
            let mut image = compile(target)?;
            if matches!(target, Target::Ptx(_)) && image.last() != Some(&0) {
                image.push(0); // PTX is loaded as a NUL-terminated string
            }
            let mut context: CUcontext = std::ptr::null_mut();
            check(cu::cuDevicePrimaryCtxRetain(&mut context, device), "cuDevicePrimaryCtxRetain")?;
            let _current = ContextGuard::push(context)?;
            let mut module: CUmodule = std::ptr::null_mut();
            check(cu::cuModuleLoadData(&mut module, image.as_ptr().cast()), "cuModuleLoadData")?;
            let mut functions = [std::ptr::null_mut(); KERNEL_NAMES.len()];
            for (slot, name) in functions.iter_mut().zip(KERNEL_NAMES) {
                let cname = CString::new(name).expect("kernel names have no NUL byte");
                check(cu::cuModuleGetFunction(slot, module, cname.as_ptr()), "cuModuleGetFunction")?;
            }
            Ok(DeviceKernels { context, _module: module, functions })
        }
    }

    /// Queue `kernel` on `stream` with one block of [`BLOCK_THREADS`] per row.
    ///
    /// # Safety
    /// `params` must point to values whose types and order match the kernel's
    /// parameters, and every pointer among them must be valid device memory of this device for
    /// what the kernel reads and writes, until the stream has run the kernel.
    pub unsafe fn launch(&self, kernel: Kernel, rows: i64, params: &mut [*mut c_void], stream: CUstream) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        let grid = u32::try_from(rows)
            .ok()
            .filter(|&g| g <= i32::MAX as u32)
            .ok_or_else(|| Error::value(format!("{rows} rows exceed the CUDA kernel's grid limit of 2^31 - 1")))?;
        let _current = ContextGuard::push(self.context)?;
        check(
            cu::cuLaunchKernel(
                self.functions[kernel.index()],
                grid,
                1,
                1,
                BLOCK_THREADS,
                1,
                1,
                0,
                stream,
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            ),
            "cuLaunchKernel",
        )
    }
}

/// The kernels of device `ordinal`, compiled and loaded on first use, then cached.
pub fn kernels(ordinal: i32) -> Result<Arc<DeviceKernels>> {
    static CACHE: OnceLock<Mutex<HashMap<i32, Arc<DeviceKernels>>>> = OnceLock::new();
    let mut cache = CACHE.get_or_init(Default::default).lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(found) = cache.get(&ordinal) {
        return Ok(found.clone());
    }
    // cudarc panics when a driver symbol is missing (a driver older than the API it asks for).
    let loaded = std::panic::catch_unwind(|| DeviceKernels::load(ordinal)).unwrap_or_else(|_| {
        Err(Error::runtime("the CUDA driver lacks a function the kernel launcher needs (driver too old?)"))
    })?;
    let loaded = Arc::new(loaded);
    cache.insert(ordinal, loaded.clone());
    Ok(loaded)
}

/// The kernel's row descriptor, laid out as `struct Rows` in logps.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Rows {
    pub used: i64,
    pub vocab: i64,
    pub batch_stride: i64,
    pub position_stride: i64,
    pub labels_stride: i64,
    pub shift: i64,
}

/// The logit transform as the kernel reads it, laid out as `struct Transform` in logps.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Transform {
    pub kind: i32,
    pub a: f32,
    pub c: f32,
    pub inv_c: f32,
}

impl From<simper_rs_core::kernels::transform::LogitTransform> for Transform {
    fn from(t: simper_rs_core::kernels::transform::LogitTransform) -> Self {
        use simper_rs_core::kernels::transform::LogitTransform;
        match t {
            LogitTransform::Identity => Transform { kind: 0, a: 1.0, c: 1.0, inv_c: 1.0 },
            LogitTransform::Scale(s) => Transform { kind: 1, a: s as f32, c: 1.0, inv_c: 1.0 },
            LogitTransform::Softcap { scale, cap } => {
                Transform { kind: 2, a: (scale / cap) as f32, c: cap as f32, inv_c: (1.0 / cap) as f32 }
            }
        }
    }
}
