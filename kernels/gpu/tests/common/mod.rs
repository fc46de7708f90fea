//! What the per-backend test files share: random sparse peers, and `per_backend!`, which instantiates each check
//! (a function taking the backend) for the CPU if asked, wgpu (everywhere: lavapipe in CI) and CUDA (where a device is present;
//! elsewhere its instances say so and return, or fail where `AGGREGATOR_REQUIRE_CUDA` is set, as `scripts/gpu-check`
//! does), in cubecl's `testgen` style.

use aggregator_kernels::ParamLayout;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

/// Random sparse inputs for `n` peers: per block, `k` distinct indices in ascending order (as a miner's top-k) and
/// values spread over several orders of magnitude, some exactly opposite so that slot means cancel to zero.
pub fn random_peers(layout: &ParamLayout, n: usize, seed: u64) -> Vec<(Vec<i16>, Vec<f32>)> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let (totalk, k) = (layout.totalk(), layout.k());
    let mut pool: Vec<i16> = (0..totalk as i16).collect();
    (0..n)
        .map(|_| {
            let (mut idxs, mut vals) = (Vec::with_capacity(layout.sparse_len()), Vec::new());
            for _ in 0..layout.n_blocks() {
                // Partial Fisher-Yates: k distinct slots.
                for i in 0..k {
                    let j = rng.random_range(i..totalk);
                    pool.swap(i, j);
                }
                let mut chosen = pool[..k].to_vec();
                chosen.sort_unstable();
                idxs.extend(chosen);
            }
            for _ in 0..layout.sparse_len() {
                let mag = 10f32.powi(rng.random_range(-3..2));
                vals.push((rng.random::<f32>() * 2.0 - 1.0) * mag);
            }
            (idxs, vals)
        })
        .collect()
}

/// `per_backend!(check, …)`: wgpu and CUDA instances; `per_backend!(cpu; check, …)`: a CPU instance too (for
/// checks taking `&dyn Backend`).
macro_rules! per_backend {
    (cpu; $($check:ident),* $(,)?) => {
        mod cpu {
            $( #[test] fn $check() { super::$check(&aggregator_kernels::Cpu::new()) } )*
        }
        common::per_backend!($($check),*);
    };
    ($($check:ident),* $(,)?) => {
        #[cfg(feature = "wgpu")]
        mod wgpu {
            fn backend() -> aggregator_gpu::AnyGpu {
                let gpu = aggregator_gpu::open_wgpu().expect("wgpu adapter (CI installs mesa-vulkan-drivers)");
                println!("wgpu: {}", gpu.description());
                aggregator_gpu::AnyGpu::Wgpu(gpu)
            }
            $( #[test] fn $check() { super::$check(&backend()) } )*
        }
        #[cfg(feature = "cuda")]
        mod cuda {
            fn backend() -> Option<aggregator_gpu::AnyGpu> {
                if !aggregator_gpu::cuda_available() {
                    // scripts/gpu-check sets this: there, a missing device is a failure, not a skip.
                    if std::env::var_os("AGGREGATOR_REQUIRE_CUDA").is_some() {
                        panic!("AGGREGATOR_REQUIRE_CUDA is set but no CUDA device (or no libcuda) is present");
                    }
                    eprintln!("no CUDA device here: the CUDA instance of this check does not run");
                    return None;
                }
                Some(aggregator_gpu::AnyGpu::Cuda(aggregator_gpu::open_cuda().expect("CUDA device")))
            }
            $( #[test] fn $check() { if let Some(b) = backend() { super::$check(&b) } } )*
        }
    };
}

#[allow(unused_imports)]
pub(crate) use per_backend;
