//! Which numeric backend a program asks for: one name from the configuration file and the flag to the code that
//! opens it (`aggregator-gpu`'s `open`).

use std::fmt;
use std::str::FromStr;

/// The numeric backend requested (`device` in the daemon's configuration, `--device` on every command). Parses
/// from and prints as `cpu`, `wgpu`, `cuda` or `auto`. This names a request; which backend actually runs (and on
/// what) is decided when it is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// Plain Rust on all cores (AVX2+FMA when available).
    Cpu,
    /// cubecl on wgpu (Vulkan, Metal, DX12; a software driver without a GPU): only on request.
    Wgpu,
    /// cubecl on CUDA.
    Cuda,
    /// CUDA when the driver library and a device are present, else the CPU.
    #[default]
    Auto,
}

impl Device {
    /// Every value, in the order help texts list them.
    pub const ALL: [Device; 4] = [Device::Cpu, Device::Wgpu, Device::Cuda, Device::Auto];

    /// The name it parses from.
    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Wgpu => "wgpu",
            Device::Cuda => "cuda",
            Device::Auto => "auto",
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Device::ALL.into_iter().find(|d| d.name() == s).ok_or_else(|| {
            let names: Vec<_> = Device::ALL.iter().map(|d| d.name()).collect();
            format!("device {s:?} must be one of {}", names.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_names_list_the_choices() {
        for d in Device::ALL {
            assert_eq!(d.name().parse::<Device>(), Ok(d));
        }
        assert_eq!(
            "gpu".parse::<Device>().unwrap_err(),
            "device \"gpu\" must be one of cpu, wgpu, cuda, auto"
        );
    }
}
