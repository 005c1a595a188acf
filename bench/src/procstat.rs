//! CPU time and memory of a process, from `/proc`: how the bench measures
//! the relay and the JavaScript server alike (both are child processes).

use std::path::PathBuf;

use crate::Result;

/// `/proc` reports CPU times in USER_HZ ticks, 100 per second on Linux.
pub const TICKS_PER_SECOND: f64 = 100.0;

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// User + system CPU seconds since the process started (all threads).
    pub cpu_s: f64,
    /// Resident set size now, KiB.
    pub rss_kb: u64,
    /// Peak resident set size (VmHWM), KiB: since start or the last [`reset_peak`].
    pub peak_kb: u64,
}

fn proc_file(pid: u32, name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{name}"))
}

pub fn sample(pid: u32) -> Result<Sample> {
    let stat = std::fs::read_to_string(proc_file(pid, "stat"))
        .map_err(|e| format!("reading /proc/{pid}/stat: {e}"))?;
    // The command name may hold spaces and parentheses: fields follow the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("unexpected /proc/PID/stat format")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    let tick = |i: usize| -> Result<f64> {
        Ok(fields
            .get(i)
            .ok_or("short /proc/PID/stat")?
            .parse::<f64>()
            .map_err(|e| format!("/proc/PID/stat field: {e}"))?)
    };
    let cpu_s = (tick(11)? + tick(12)?) / TICKS_PER_SECOND;
    let status = std::fs::read_to_string(proc_file(pid, "status"))
        .map_err(|e| format!("reading /proc/{pid}/status: {e}"))?;
    let kb = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(Sample {
        cpu_s,
        rss_kb: kb("VmRSS:"),
        peak_kb: kb("VmHWM:"),
    })
}

/// This process's own peak resident set size, KiB.
pub fn own_peak_kb() -> u64 {
    sample(std::process::id()).map(|s| s.peak_kb).unwrap_or(0)
}

/// Resets the process's VmHWM to its current RSS (Linux 4.0+), so the next
/// reading is the peak of what happens from now on. Returns false where the
/// kernel does not allow it (the peak then counts from process start).
pub fn reset_peak(pid: u32) -> bool {
    std::fs::write(proc_file(pid, "clear_refs"), "5").is_ok()
}
