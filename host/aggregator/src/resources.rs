//! Process resource figures for benchmark reports: peak RSS, CPU time, load average.

use std::time::Duration;

/// Resource usage of this process so far.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// User + system CPU time.
    pub cpu: Duration,
    /// Peak resident set size in bytes.
    pub peak_rss: u64,
}

/// Reads `getrusage(RUSAGE_SELF)`.
pub fn usage() -> Usage {
    // SAFETY: getrusage writes a plain C struct that we zero-initialise first.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    // Linux reports ru_maxrss in KiB.
    Usage {
        cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
        peak_rss: ru.ru_maxrss as u64 * 1024,
    }
}

/// The 1-minute load average, when the platform reports it.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Resets the peak RSS that [`peak_rss_since_reset`] reads to the current RSS (Linux: `/proc/self/clear_refs`), after
/// handing freed heap pages back to the system, so that a benchmark's set-up (synthesis, uploads) does not count in
/// the peak of what it times. False where the platform cannot.
pub fn reset_peak_rss() -> bool {
    // SAFETY: malloc_trim only returns free pages of glibc's heap to the kernel.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0);
    }
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The peak RSS since the last [`reset_peak_rss`] (or since start), bytes: `VmHWM` of `/proc/self/status`.
pub fn peak_rss_since_reset() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
