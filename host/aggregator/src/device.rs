//! The numeric backend: opening the [`Device`] a command asks for (`--device`, `AGGREGATOR_DEVICE`, or the daemon's
//! `device` key), and logging which backend runs on what.

use std::sync::Arc;

#[cfg(not(feature = "gpu"))]
use aggregator_kernels::Cpu;
use aggregator_kernels::{Backend, Device};

/// The opened numeric backend, and the GPU behind it when there is one (for `bench process`'s on-device timing).
pub(crate) struct Numeric {
    pub(crate) backend: Arc<dyn Backend>,
    /// Backend and device, for the start-up line.
    pub(crate) description: String,
    #[cfg(feature = "gpu")]
    pub(crate) gpu: Option<Arc<aggregator_gpu::AnyGpu>>,
}

/// Opens the backend `device` asks for and logs which one runs, and on what.
pub(crate) fn open_device(device: Device) -> anyhow::Result<Numeric> {
    let numeric = open_quietly(device)?;
    tracing::info!(device = %numeric.description, requested = %device, "numeric backend");
    Ok(numeric)
}

#[cfg(feature = "gpu")]
fn open_quietly(device: Device) -> anyhow::Result<Numeric> {
    use aggregator_gpu::Opened;
    let opened = aggregator_gpu::open(device)?;
    let description = opened.describe();
    Ok(match opened {
        Opened::Cpu(cpu) => Numeric {
            backend: Arc::new(cpu),
            description,
            gpu: None,
        },
        Opened::Gpu(g) => {
            let g: Arc<aggregator_gpu::AnyGpu> = Arc::from(g);
            Numeric {
                backend: g.clone(),
                description,
                gpu: Some(g),
            }
        }
    })
}

#[cfg(not(feature = "gpu"))]
fn open_quietly(device: Device) -> anyhow::Result<Numeric> {
    match device {
        Device::Cpu | Device::Auto => {
            let cpu = Cpu::new();
            Ok(Numeric {
                description: format!("cpu ({})", cpu.isa().name()),
                backend: Arc::new(cpu),
            })
        }
        other => anyhow::bail!("--device {other}: this binary was built without the `gpu` feature"),
    }
}
