//! The seam between the numeric core's callers and its implementations: [`crate::Cpu`] here, the cubecl GPU backends in
//! `aggregator-gpu`.

use crate::{Contribution, Cpu, KernelError, ParamLayout};

/// An implementation of the aggregator-side numeric core. Every implementation must give bit-identical results
/// (see the crate docs for the order of operations).
pub trait Backend: Send + Sync {
    /// Short name for reports and logs (`cpu`, `wgpu`, `cuda`).
    fn name(&self) -> &str;
    /// Fused aggregation of one parameter into 1-bit packed signs (`layout.packed_len()` bytes).
    fn aggregate(&self, layout: &ParamLayout, peers: &[Contribution], packed: &mut [u8]) -> Result<(), KernelError>;
    /// The same pipeline, returning the decoded values before the sign (`layout.numel()` floats).
    fn aggregate_decoded(
        &self,
        layout: &ParamLayout,
        peers: &[Contribution],
        out: &mut [f32],
    ) -> Result<(), KernelError>;
    /// Scatter-mean only, into dense coefficients (`xshape`).
    fn scatter_mean(&self, layout: &ParamLayout, peers: &[Contribution], dense: &mut [f32]) -> Result<(), KernelError>;
    /// Inverse block DCT of dense coefficients (`xshape`) into parameter values.
    fn decode(&self, layout: &ParamLayout, dense: &[f32], out: &mut [f32]) -> Result<(), KernelError>;
}

impl Backend for Cpu {
    fn name(&self) -> &str {
        "cpu"
    }
    fn aggregate(&self, layout: &ParamLayout, peers: &[Contribution], packed: &mut [u8]) -> Result<(), KernelError> {
        Cpu::aggregate(self, layout, peers, packed)
    }
    fn aggregate_decoded(
        &self,
        layout: &ParamLayout,
        peers: &[Contribution],
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        Cpu::aggregate_decoded(self, layout, peers, out)
    }
    fn scatter_mean(&self, layout: &ParamLayout, peers: &[Contribution], dense: &mut [f32]) -> Result<(), KernelError> {
        Cpu::scatter_mean(self, layout, peers, dense)
    }
    fn decode(&self, layout: &ParamLayout, dense: &[f32], out: &mut [f32]) -> Result<(), KernelError> {
        Cpu::decode(self, layout, dense, out)
    }
}
