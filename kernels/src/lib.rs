//! Numeric core of the aggregation server (Templar 0.2.73 wire behaviour, spec §1.4.2, §2.5, §3.1, §3.2).
//!
//! * Miner side: block DCT [`Cpu::encode`], top-k [`Cpu::compress`], and the inverse ([`Cpu::decode`]).
//! * Aggregator side, one parameter at a time: per-peer L2 normalisation ([`PeerSparse::normalised`]),
//!   scatter-mean over the peers that chose a slot, inverse block DCT, sign and LSB-first 1-bit packing, fused in
//!   [`Cpu::aggregate`]; [`unpack_signs`] for the reverse.
//!
//! # Bit-exact contract
//! The same inputs give the same output bits on every run, thread count, ISA and GPU backend (`aggregator-gpu`):
//! * the constant tables of the plans (f64 maths rounded once to f32) are shared by all backends;
//! * scatter: per slot, `sum = fma(weight, v, sum)` and `wsum += weight` in peer order then entry order; mean
//!   `sum / wsum`;
//! * stage 1 (width axis): `U[k, :] = fma(mean, T_k[l, :], U[k, :])` over touched slots in ascending `l`, from `+0`;
//! * stage 2 (height axis): Lee's DCT-III for power-of-two heights, else a dense sum in ascending `k`;
//! * every multiply that feeds an add is an explicit fused multiply-add, so no compiler contraction can differ.
//!
//! The numbers match Templar's reference within the tolerances of the golden vectors (`../shared/vectors`); the
//! sign bits match except where the reference's own pre-sign value is within 1e-6 of zero.

mod backend;
mod basis;
mod cpu;
mod device;
mod error;
mod fastdct;
mod layout;
mod pack;
mod plan;
mod sparse;
mod strip;

pub use backend::Backend;
pub use basis::DctBasis;
pub use cpu::{Cpu, Isa};
pub use device::Device;
pub use error::{KernelError, check_len};
pub use layout::{MAX_TOTALK, ParamLayout, split};
pub use pack::{pack_signs, unpack_signs};
pub use plan::{BlockTables, HeightTables};
pub use sparse::{Contribution, MAX_WEIGHT, MIN_WEIGHT, PeerSparse, check_finite, l2_norm, normalise_into, usable};
