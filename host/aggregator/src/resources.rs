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
