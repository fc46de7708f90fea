//! [`Gpu`]: the numeric core on one cubecl runtime, implementing [`Backend`] with the same bits as the CPU path.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};

use aggregator_kernels::{
    Backend, BlockTables, Contribution, HeightTables, KernelError, ParamLayout, check_len, usable,
};
use cubecl::prelude::*;
use cubecl::server::Handle;

use crate::kernel::{self, SINK_BITS, SINK_COEFFS, SINK_FLOATS, SOURCE_DENSE, SOURCE_SPARSE, UNITS};

/// A parameter's inputs, resident on the device: what [`Gpu::stage`] uploads and [`Gpu::launch_staged`] reads.
pub struct Staged {
    layout: ParamLayout,
    n_peers: usize,
    /// Length of `idx` and `val` (at least 1).
    entries: usize,
    idx: Handle,
    val: Handle,
    weight: Handle,
}

impl Staged {
    /// The layout these inputs were checked against.
    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }
    /// Peers with a weight above 0.
    pub fn peers(&self) -> usize {
        self.n_peers
    }
}

/// One block shape's constant tables on the device.
struct DeviceTables {
    handle: Handle,
    len: usize,
    fast: bool,
}

/// Where the coefficients come from.
enum Source<'a> {
    Sparse(&'a Staged),
    Dense(Handle, usize),
}

/// The numeric core on the cubecl runtime `R`.
pub struct Gpu<R: Runtime> {
    client: ComputeClient<R>,
    name: &'static str,
    description: String,
    /// Whether the device's own `fma` is exact (else the kernel emulates it; see [`kernel::fma_x`]).
    native_fma: bool,
    tables: Mutex<HashMap<(usize, usize), Arc<DeviceTables>>>,
    /// One-word stand-ins for the buffers a launch does not use, one per kernel argument (so that no buffer is ever
    /// bound twice in one launch), uploaded once rather than per parameter.
    unused: Unused,
}

/// See [`Gpu::unused`]: the stand-ins for `block_kernel`'s `idx`, `val`, `weight`, `dense`, `bits` and `floats`.
struct Unused {
    idx: Handle,
    val: Handle,
    weight: Handle,
    dense: Handle,
    bits: Handle,
    floats: Handle,
}

/// Inputs of the arithmetic probe: random triples over the magnitudes the numeric core meets, and triples whose
/// fused and unfused results differ by construction (`(1 + x)(1 - x) - 1`).
fn probe_inputs() -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    // SplitMix64: a fixed, dependency-free sequence.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut value = move || {
        let r = next();
        let mant = 1.0 + (r >> 40) as f32 / (1u64 << 24) as f32;
        let exp = ((r >> 8) % 24) as i32 - 16;
        let sign = if r & 1 == 0 { 1.0 } else { -1.0 };
        sign * mant * 2f32.powi(exp)
    };
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..4096 {
        a.push(value());
        b.push(value());
        // Every other triple cancels most of the product, where rounding the product first shows.
        let p = a[i] * b[i];
        c.push(if i % 2 == 0 { -p } else { value() });
    }
    for k in 1..24 {
        let x = 2f32.powi(-k);
        a.push(1.0 + x);
        b.push(1.0 - x);
        c.push(-1.0);
    }
    (a, b, c)
}

/// Runs `f`, turning a panic inside cubecl (a failed compile, a lost device) into a [`KernelError::Device`].
pub(crate) fn guarded<T>(backend: &'static str, f: impl FnOnce() -> Result<T, KernelError>) -> Result<T, KernelError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let reason = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the runtime panicked".into());
        Err(KernelError::Device { backend, reason })
    })
}

/// Zero-length buffers are not allowed on every runtime: pads an empty one with a single `z`.
fn pad<T>(v: &mut Vec<T>, z: T) {
    if v.is_empty() {
        v.push(z)
    }
}

impl<R: Runtime> Gpu<R> {
    /// Wraps a client of runtime `R`; `name` is the backend's short name (`wgpu`, `cuda`), `description` what the
    /// start-up line reports (adapter, device).
    ///
    /// Probes the device's arithmetic first: its `fma` is used when it is exact on every probe input, else the
    /// emulation, which must then be exact itself; a device where neither is refused, since it could not give the
    /// CPU path's bits.
    pub fn new(client: ComputeClient<R>, name: &'static str, description: String) -> Result<Self, KernelError> {
        let word = || client.create_from_slice(&[0u8; 4]);
        let unused = guarded(name, || {
            Ok(Unused {
                idx: word(),
                val: word(),
                weight: word(),
                dense: word(),
                bits: word(),
                floats: word(),
            })
        })?;
        let mut gpu = Self {
            client,
            name,
            description,
            native_fma: true,
            tables: Mutex::default(),
            unused,
        };
        gpu.native_fma = gpu.probe_fma(true)?;
        if !gpu.native_fma && !gpu.probe_fma(false)? {
            return Err(
                gpu.err("neither the device's fma nor its emulation is exact: it cannot give the CPU path's bits")
            );
        }
        gpu.description = format!(
            "{} (fma: {})",
            gpu.description,
            if gpu.native_fma { "native" } else { "emulated" }
        );
        Ok(gpu)
    }

    /// Whether [`kernel::fma_x`] with `native` gives `f32::mul_add`'s bits on every probe input.
    fn probe_fma(&self, native: bool) -> Result<bool, KernelError> {
        let (a, b, c) = probe_inputs();
        let n = a.len();
        let count = self.cube_count(n.div_ceil(UNITS as usize))?;
        let got = guarded(self.name, || {
            let [ha, hb, hc] = [&a, &b, &c].map(|v| self.client.create_from_slice(f32::as_bytes(v)));
            let out = self.client.empty(n * 4);
            // SAFETY: all four buffers hold `n` floats and the kernel guards its index by `out.len()`.
            unsafe {
                kernel::fma_probe::launch_unchecked::<R>(
                    &self.client,
                    count,
                    CubeDim::new_1d(UNITS),
                    ArrayArg::from_raw_parts(ha, n),
                    ArrayArg::from_raw_parts(hb, n),
                    ArrayArg::from_raw_parts(hc, n),
                    ArrayArg::from_raw_parts(out.clone(), n),
                    0u32,
                    native,
                )
            };
            Ok(out)
        })?;
        let mut out = vec![0f32; n];
        self.read_floats(got, &mut out)?;
        let wrong = (0..n)
            .filter(|&i| out[i].to_bits() != a[i].mul_add(b[i], c[i]).to_bits())
            .count();
        tracing::debug!(backend = self.name, native, wrong, of = n, "fma probe");
        Ok(wrong == 0)
    }

    /// Whether the kernels use the device's own fused multiply-add (else an exact emulation).
    pub fn native_fma(&self) -> bool {
        self.native_fma
    }

    /// The adapter or device this backend runs on.
    pub fn description(&self) -> &str {
        &self.description
    }

    fn err(&self, reason: impl Into<String>) -> KernelError {
        KernelError::Device {
            backend: self.name,
            reason: reason.into(),
        }
    }

    fn tables(&self, h: usize, w: usize) -> Arc<DeviceTables> {
        let mut map = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        map.entry((h, w))
            .or_insert_with(|| {
                let t = BlockTables::new(h, w);
                let mut flat = [t.t_first, t.t_rest].concat();
                let fast = match t.height {
                    HeightTables::Fast { twiddles } => {
                        flat.extend(twiddles);
                        true
                    }
                    HeightTables::Dense { forward } => {
                        flat.extend(forward);
                        false
                    }
                };
                Arc::new(DeviceTables {
                    handle: self.client.create_from_slice(f32::as_bytes(&flat)),
                    len: flat.len(),
                    fast,
                })
            })
            .clone()
    }

    /// Shared-memory tile for `layout` (a multiple of [`UNITS`]), checked against the device.
    fn tile(&self, layout: &ParamLayout) -> Result<usize, KernelError> {
        let tile = layout.totalk().div_ceil(UNITS as usize) * UNITS as usize;
        let limit = self.client.properties().hardware.max_shared_memory_size;
        if tile * 4 > limit {
            return Err(self.err(format!(
                "a {}x{} block needs {} bytes of shared memory; this device has {limit}",
                layout.block_h(),
                layout.block_w(),
                tile * 4
            )));
        }
        Ok(tile)
    }

    /// A 2-D grid of `n` cubes within the device's per-axis limit.
    fn cube_count(&self, n: usize) -> Result<CubeCount, KernelError> {
        let (mx, my, _) = self.client.properties().hardware.max_cube_count;
        let x = n.clamp(1, mx as usize);
        let y = n.div_ceil(x);
        if y > my as usize {
            return Err(self.err(format!("{n} blocks exceed the device's grid")));
        }
        Ok(CubeCount::Static(x as u32, y as u32, 1))
    }

    /// Every index the kernel computes fits in `u32`.
    fn check_u32(&self, what: &str, n: usize) -> Result<u32, KernelError> {
        u32::try_from(n).map_err(|_| self.err(format!("{what} = {n} does not fit the kernel's 32-bit indices")))
    }

    /// Checks `peers` as every backend does, then uploads their indices (widened to `u32`), values and weights.
    pub fn stage(&self, layout: &ParamLayout, peers: &[Contribution]) -> Result<Staged, KernelError> {
        let peers = usable(layout, peers)?;
        let n = layout.sparse_len();
        self.check_u32("peers x entries", peers.len().max(1) * n)?;
        let mut idx = Vec::with_capacity(peers.len() * n);
        let mut val = Vec::with_capacity(peers.len() * n);
        for p in &peers {
            // Validated by `PeerSparse::new`: every index is in [0, totalk).
            idx.extend(p.sparse.idxs().iter().map(|&i| i as u32));
            val.extend_from_slice(p.sparse.vals());
        }
        let weight: Vec<f32> = peers.iter().map(|p| p.weight).collect();
        guarded(self.name, || {
            let (mut idx, mut val, mut weight) = (idx, val, weight);
            pad(&mut idx, 0u32);
            pad(&mut val, 0.0f32);
            pad(&mut weight, 0.0f32);
            Ok(Staged {
                layout: layout.clone(),
                n_peers: peers.len(),
                entries: idx.len(),
                idx: self.client.create_from_slice(u32::as_bytes(&idx)),
                val: self.client.create_from_slice(f32::as_bytes(&val)),
                weight: self.client.create_from_slice(f32::as_bytes(&weight)),
            })
        })
    }

    /// Launches the kernel; returns the output buffer (packed words or floats) without waiting for it.
    fn launch(&self, layout: &ParamLayout, source: Source, sink: u32) -> Result<Handle, KernelError> {
        let tile = self.tile(layout)?;
        let n_blocks = layout.n_blocks();
        let count = self.cube_count(n_blocks)?;
        let numel = layout.numel();
        let words = numel.div_ceil(32);
        self.check_u32("packed bits", words * 32)?;
        self.check_u32("coefficients", n_blocks * tile)?;
        // Blocks tile the parameter exactly, so decoded values and coefficients both number `numel`.
        let out_len = if sink == SINK_BITS { words } else { numel };
        let tables = self.tables(layout.block_h(), layout.block_w());
        guarded(self.name, || {
            let u = &self.unused;
            let out = if sink == SINK_BITS {
                self.zeroed_words(words)?
            } else {
                self.client.empty(out_len * 4)
            };
            let (bits, floats) = if sink == SINK_BITS {
                ((out.clone(), out_len), (u.floats.clone(), 1))
            } else {
                ((u.bits.clone(), 1), (out.clone(), out_len))
            };
            let (idx, val, weight, dense, n_peers, src) = match source {
                Source::Sparse(s) => (
                    (s.idx.clone(), s.entries),
                    (s.val.clone(), s.entries),
                    (s.weight.clone(), s.n_peers.max(1)),
                    (u.dense.clone(), 1),
                    s.n_peers,
                    SOURCE_SPARSE,
                ),
                Source::Dense(h, len) => (
                    (u.idx.clone(), 1),
                    (u.val.clone(), 1),
                    (u.weight.clone(), 1),
                    (h, len),
                    0,
                    SOURCE_DENSE,
                ),
            };
            // SAFETY: every buffer is at least as long as declared; the kernel guards its indices by `n_blocks`,
            // `totalk` and the packed length, and the staged indices were validated to be in [0, totalk).
            unsafe {
                kernel::block_kernel::launch_unchecked::<R>(
                    &self.client,
                    count,
                    CubeDim::new_1d(UNITS),
                    ArrayArg::from_raw_parts(idx.0, idx.1),
                    ArrayArg::from_raw_parts(val.0, val.1),
                    ArrayArg::from_raw_parts(weight.0, weight.1),
                    ArrayArg::from_raw_parts(dense.0, dense.1),
                    ArrayArg::from_raw_parts(tables.handle.clone(), tables.len),
                    ArrayArg::from_raw_parts(bits.0, bits.1),
                    ArrayArg::from_raw_parts(floats.0, floats.1),
                    n_peers as u32,
                    n_blocks as u32,
                    layout.k() as u32,
                    layout.block_h() as u32,
                    layout.block_w() as u32,
                    layout.blocks_x() as u32,
                    layout.cols() as u32,
                    0u32,
                    tile,
                    tables.fast,
                    src,
                    sink,
                    self.native_fma,
                )
            };
            Ok(out)
        })
    }

    /// A device buffer of `n` zero words, cleared by a kernel (no host copy).
    fn zeroed_words(&self, n: usize) -> Result<Handle, KernelError> {
        let out = self.client.empty(n.max(1) * 4);
        let count = self.cube_count(n.max(1).div_ceil(UNITS as usize))?;
        // SAFETY: the kernel writes only indices below `n`, the buffer's length.
        unsafe {
            kernel::zero_kernel::launch_unchecked::<R>(
                &self.client,
                count,
                CubeDim::new_1d(UNITS),
                ArrayArg::from_raw_parts(out.clone(), n.max(1)),
            )
        };
        Ok(out)
    }

    /// Launches the aggregation of staged inputs into packed sign words; read them with [`Gpu::read_packed`].
    pub fn launch_staged(&self, staged: &Staged) -> Result<Handle, KernelError> {
        self.launch(&staged.layout, Source::Sparse(staged), SINK_BITS)
    }

    /// Unpacks `out.len()` signs from `packed` (LSB-first, as [`aggregator_kernels::unpack_signs`]) on the device.
    pub fn unpack_signs(&self, packed: &[u8], out: &mut [f32]) -> Result<(), KernelError> {
        check_len("packed", out.len().div_ceil(8), packed.len())?;
        if out.is_empty() {
            return Ok(());
        }
        let n = out.len();
        self.check_u32("elements", n)?;
        let mut words = vec![0u32; packed.len().div_ceil(4)];
        for (w, c) in words.iter_mut().zip(packed.chunks(4)) {
            let mut b = [0u8; 4];
            b[..c.len()].copy_from_slice(c);
            *w = u32::from_le_bytes(b);
        }
        let count = self.cube_count(n.div_ceil(UNITS as usize))?;
        let handle = guarded(self.name, || {
            let input = self.client.create_from_slice(u32::as_bytes(&words));
            let output = self.client.empty(n * 4);
            // SAFETY: `words` covers every element below `n` and the kernel guards its index by `out.len()`.
            unsafe {
                kernel::unpack_kernel::launch_unchecked::<R>(
                    &self.client,
                    count,
                    CubeDim::new_1d(UNITS),
                    ArrayArg::from_raw_parts(input, words.len()),
                    ArrayArg::from_raw_parts(output.clone(), n),
                )
            };
            Ok(output)
        })?;
        self.read_floats(handle, out)
    }

    /// Waits for every launched kernel.
    pub fn sync(&self) -> Result<(), KernelError> {
        guarded(self.name, || {
            cubecl::future::block_on(self.client.sync()).map_err(|e| self.err(format!("{e:?}")))
        })
    }

    fn read(&self, handle: Handle) -> Result<Vec<u8>, KernelError> {
        guarded(self.name, || {
            self.client
                .read_one(handle)
                .map(|b| b.to_vec())
                .map_err(|e| self.err(format!("reading results: {e:?}")))
        })
    }

    /// Copies packed words back and trims them to `layout.packed_len()` bytes.
    pub fn read_packed(&self, layout: &ParamLayout, handle: Handle) -> Result<Vec<u8>, KernelError> {
        let mut bytes = self.read(handle)?;
        bytes.truncate(layout.packed_len());
        check_len("packed", layout.packed_len(), bytes.len())?;
        Ok(bytes)
    }

    fn read_floats(&self, handle: Handle, out: &mut [f32]) -> Result<(), KernelError> {
        let bytes = self.read(handle)?;
        let n = out.len();
        if bytes.len() < n * 4 {
            return Err(self.err(format!("read {} bytes, expected {}", bytes.len(), n * 4)));
        }
        for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
            *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        Ok(())
    }
}

impl<R: Runtime> Backend for Gpu<R> {
    fn name(&self) -> &str {
        self.name
    }

    fn aggregate(&self, layout: &ParamLayout, peers: &[Contribution], packed: &mut [u8]) -> Result<(), KernelError> {
        check_len("packed", layout.packed_len(), packed.len())?;
        let staged = self.stage(layout, peers)?;
        let out = self.launch_staged(&staged)?;
        packed.copy_from_slice(&self.read_packed(layout, out)?);
        Ok(())
    }

    fn aggregate_decoded(
        &self,
        layout: &ParamLayout,
        peers: &[Contribution],
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        check_len("decoded", layout.numel(), out.len())?;
        let staged = self.stage(layout, peers)?;
        let h = self.launch(layout, Source::Sparse(&staged), SINK_FLOATS)?;
        self.read_floats(h, out)
    }

    fn scatter_mean(&self, layout: &ParamLayout, peers: &[Contribution], dense: &mut [f32]) -> Result<(), KernelError> {
        check_len("dense", layout.n_blocks() * layout.totalk(), dense.len())?;
        let staged = self.stage(layout, peers)?;
        let h = self.launch(layout, Source::Sparse(&staged), SINK_COEFFS)?;
        self.read_floats(h, dense)
    }

    fn decode(&self, layout: &ParamLayout, dense: &[f32], out: &mut [f32]) -> Result<(), KernelError> {
        check_len("dense", layout.n_blocks() * layout.totalk(), dense.len())?;
        check_len("decoded", layout.numel(), out.len())?;
        let input = guarded(self.name, || Ok(self.client.create_from_slice(f32::as_bytes(dense))))?;
        let h = self.launch(layout, Source::Dense(input, dense.len()), SINK_FLOATS)?;
        self.read_floats(h, out)
    }
}
