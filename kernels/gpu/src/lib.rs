//! GPU backends of the numeric core: cubecl kernels for scatter-mean, inverse block DCT, sign and 1-bit packing, on
//! CUDA and on wgpu (Vulkan, Metal, DX12; the software Vulkan driver lavapipe in CI).
//!
//! One fused kernel per parameter ([`kernel::block_kernel`]): a cube per DCT block takes the peers' sparse pairs to
//! packed sign bits with the block in shared memory, so a parameter's data stays on the device from upload to the
//! packed bytes. It follows the CPU path's order of operations exactly (explicit fused multiply-adds, fixed sums,
//! no float atomics), so every backend gives **the same bits** as [`aggregator_kernels::Cpu`]; the tests check this
//! bit for bit on the shared vectors and on random inputs of the `templar-1b` shapes.
//!
//! Choosing a backend: [`open`] with a [`Device`]. `auto` is CUDA when the driver library and a device are
//! present, else the CPU; wgpu is used only on request. cubecl is pinned to `=0.10.0`, the last release whose CUDA
//! runtime builds without downloading LLVM (`../shared/notes/gpu.md`); NVRTC and libcuda are loaded at run time.

#[cfg(not(any(feature = "wgpu", feature = "cuda")))]
compile_error!("aggregator-gpu needs at least one runtime feature: `wgpu` or `cuda`");

pub mod device;
// `#[cube]` generates undocumented expansion modules and launch helpers beside each documented kernel.
#[allow(missing_docs)]
pub mod kernel;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use aggregator_kernels::Device;
use aggregator_kernels::{Backend, Contribution, Cpu, KernelError, ParamLayout};

pub use device::{Gpu, Staged};

/// Whether the CUDA driver library loads and reports at least one device. Never panics (cudarc panics when
/// libcuda is missing, so its presence is probed first).
pub fn cuda_available() -> bool {
    #[cfg(feature = "cuda")]
    {
        // SAFETY: only probes whether the library can be loaded.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return false;
        }
        std::panic::catch_unwind(|| cudarc::driver::CudaContext::device_count().unwrap_or(0) > 0).unwrap_or(false)
    }
    #[cfg(not(feature = "cuda"))]
    false
}

/// The wgpu backend on the default adapter.
#[cfg(feature = "wgpu")]
pub fn open_wgpu() -> Result<Gpu<cubecl::wgpu::WgpuRuntime>, KernelError> {
    use cubecl::wgpu::{AutoGraphicsApi, RuntimeOptions, WgpuDevice, WgpuRuntime, init_setup};
    use std::sync::OnceLock;
    // A device's server is registered once per process; later calls reuse it.
    static SETUP: OnceLock<Result<String, String>> = OnceLock::new();
    let device = WgpuDevice::DefaultDevice;
    let described = SETUP.get_or_init(|| {
        device::guarded("wgpu", || {
            let setup = init_setup::<AutoGraphicsApi>(&device, RuntimeOptions::default());
            let info = setup.adapter.get_info();
            Ok(format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type))
        })
        .map_err(|e| e.to_string())
    });
    match described {
        Ok(d) => {
            let client = <WgpuRuntime as cubecl::Runtime>::client(&device);
            Gpu::new(client, "wgpu", d.clone())
        }
        Err(e) => Err(KernelError::Device {
            backend: "wgpu",
            reason: format!("no usable adapter: {e}"),
        }),
    }
}

/// The CUDA backend on device 0.
#[cfg(feature = "cuda")]
pub fn open_cuda() -> Result<Gpu<cubecl::cuda::CudaRuntime>, KernelError> {
    use cubecl::cuda::{CudaDevice, CudaRuntime};
    if !cuda_available() {
        return Err(KernelError::Device {
            backend: "cuda",
            reason: "no CUDA driver library (libcuda.so) or no device".into(),
        });
    }
    device::guarded("cuda", || {
        let device = CudaDevice::new(0);
        let client = <CudaRuntime as cubecl::Runtime>::client(&device);
        let hw = &client.properties().hardware;
        let description = format!(
            "CUDA device 0 ({} SMs, {} KiB shared memory per cube)",
            hw.num_streaming_multiprocessors.unwrap_or(0),
            hw.max_shared_memory_size / 1024
        );
        Gpu::new(client, "cuda", description)
    })
}

/// An opened GPU backend of either runtime.
pub enum AnyGpu {
    /// wgpu.
    #[cfg(feature = "wgpu")]
    Wgpu(Gpu<cubecl::wgpu::WgpuRuntime>),
    /// CUDA.
    #[cfg(feature = "cuda")]
    Cuda(Gpu<cubecl::cuda::CudaRuntime>),
}

macro_rules! each {
    ($self:expr, $g:ident => $body:expr) => {
        match $self {
            #[cfg(feature = "wgpu")]
            AnyGpu::Wgpu($g) => $body,
            #[cfg(feature = "cuda")]
            AnyGpu::Cuda($g) => $body,
        }
    };
}

/// Timings of [`AnyGpu::time_resident`].
#[derive(Debug, Clone)]
pub struct ResidentTiming {
    /// Host → device copy of every parameter's staged inputs (indices widened, values, weights).
    pub upload: Duration,
    /// Each run: every parameter's kernels launched and completed, data already on the device.
    pub process: Vec<Duration>,
    /// Device → host copy of every packed output.
    pub download: Duration,
    /// The packed outputs of the last run, one per parameter.
    pub packed: Vec<Vec<u8>>,
}

impl AnyGpu {
    /// The adapter or device in use.
    pub fn description(&self) -> &str {
        each!(self, g => g.description())
    }

    /// Unpacks signs on the device (see [`Gpu::unpack_signs`]).
    pub fn unpack_signs(&self, packed: &[u8], out: &mut [f32]) -> Result<(), KernelError> {
        each!(self, g => g.unpack_signs(packed, out))
    }

    /// Uploads every parameter's inputs once, then times `runs` full process steps on the device (all parameters'
    /// kernels, then a sync), then copies the packed outputs back.
    pub fn time_resident(
        &self,
        params: &[(ParamLayout, Vec<Contribution>)],
        runs: usize,
    ) -> Result<ResidentTiming, KernelError> {
        each!(self, g => {
            let t = Instant::now();
            let staged = params
                .iter()
                .map(|(layout, peers)| g.stage(layout, peers))
                .collect::<Result<Vec<_>, _>>()?;
            g.sync()?;
            let upload = t.elapsed();
            let mut process = Vec::with_capacity(runs);
            let mut outputs = Vec::new();
            for _ in 0..runs.max(1) {
                outputs.clear();
                let t = Instant::now();
                for s in &staged {
                    outputs.push(g.launch_staged(s)?);
                }
                g.sync()?;
                process.push(t.elapsed());
            }
            let t = Instant::now();
            let packed = staged
                .iter()
                .zip(outputs)
                .map(|(s, h)| g.read_packed(s.layout(), h))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ResidentTiming { upload, process, download: t.elapsed(), packed })
        })
    }
}

impl Backend for AnyGpu {
    fn name(&self) -> &str {
        each!(self, g => g.name())
    }
    fn aggregate(&self, layout: &ParamLayout, peers: &[Contribution], packed: &mut [u8]) -> Result<(), KernelError> {
        each!(self, g => g.aggregate(layout, peers, packed))
    }
    fn aggregate_decoded(
        &self,
        layout: &ParamLayout,
        peers: &[Contribution],
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        each!(self, g => g.aggregate_decoded(layout, peers, out))
    }
    fn scatter_mean(&self, layout: &ParamLayout, peers: &[Contribution], dense: &mut [f32]) -> Result<(), KernelError> {
        each!(self, g => g.scatter_mean(layout, peers, dense))
    }
    fn decode(&self, layout: &ParamLayout, dense: &[f32], out: &mut [f32]) -> Result<(), KernelError> {
        each!(self, g => g.decode(layout, dense, out))
    }
}

/// The backend a program runs with, as [`open`] chose it.
pub enum Opened {
    /// The CPU path.
    Cpu(Cpu),
    /// A GPU backend.
    Gpu(Box<AnyGpu>),
}

impl Opened {
    /// As a shareable [`Backend`].
    pub fn into_backend(self) -> Arc<dyn Backend> {
        match self {
            Opened::Cpu(c) => Arc::new(c),
            Opened::Gpu(g) => Arc::<AnyGpu>::from(g),
        }
    }
    /// One line for the start-up log: backend and device.
    pub fn describe(&self) -> String {
        match self {
            Opened::Cpu(c) => format!("cpu ({}, {} cores)", c.isa().name(), cores()),
            Opened::Gpu(g) => format!("{} on {}", g.name(), g.description()),
        }
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The error for a runtime this build does not include.
#[cfg(not(all(feature = "wgpu", feature = "cuda")))]
fn not_built(backend: &'static str) -> KernelError {
    KernelError::Device {
        backend,
        reason: format!("this binary was built without the `{backend}` feature"),
    }
}

/// Opens the backend for `choice`. `auto` never fails: it falls back to the CPU when CUDA is absent or fails to
/// start. An explicit `wgpu` or `cuda` fails with a clear error when that runtime is unavailable (or not built in).
pub fn open(choice: Device) -> Result<Opened, KernelError> {
    match choice {
        Device::Cpu => Ok(Opened::Cpu(Cpu::new())),
        Device::Wgpu => {
            #[cfg(feature = "wgpu")]
            return open_wgpu().map(|g| Opened::Gpu(Box::new(AnyGpu::Wgpu(g))));
            #[cfg(not(feature = "wgpu"))]
            Err(not_built("wgpu"))
        }
        Device::Cuda => {
            #[cfg(feature = "cuda")]
            return open_cuda().map(|g| Opened::Gpu(Box::new(AnyGpu::Cuda(g))));
            #[cfg(not(feature = "cuda"))]
            Err(not_built("cuda"))
        }
        Device::Auto => {
            #[cfg(feature = "cuda")]
            if cuda_available() {
                match open_cuda() {
                    Ok(g) => return Ok(Opened::Gpu(Box::new(AnyGpu::Cuda(g)))),
                    Err(e) => tracing::warn!(error = %e, "CUDA is present but failed to start; using the CPU"),
                }
            }
            Ok(Opened::Cpu(Cpu::new()))
        }
    }
}
