//! CPU time and memory of a process, from `/proc`: how the bench measures
//! the relay and the JavaScript server alike (both are child processes).

use std::path::PathBuf;

use crate::Result;

/// `/proc` reports CPU times in USER_HZ ticks, 100 per second on Linux.
const TICKS_PER_SECOND: f64 = 100.0;

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

/// The fields of `/proc/PID/stat` after the command name (which may hold
/// spaces and parentheses: they follow the last ')'); `[0]` is field 3
/// (state), `[1]` the parent's pid, `[11]`/`[12]` utime/stime, `[13]`/`[14]`
/// the reaped children's cutime/cstime.
fn stat_fields(pid: u32) -> Result<Vec<String>> {
    let stat = std::fs::read_to_string(proc_file(pid, "stat"))
        .map_err(|e| format!("reading /proc/{pid}/stat: {e}"))?;
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("unexpected /proc/PID/stat format")?;
    Ok(rest.split_whitespace().map(str::to_string).collect())
}

/// Stat field `i` (see [`stat_fields`]) as a number.
fn field(fields: &[String], i: usize) -> Result<f64> {
    Ok(fields
        .get(i)
        .ok_or("short /proc/PID/stat")?
        .parse::<f64>()
        .map_err(|e| format!("/proc/PID/stat field: {e}"))?)
}

pub fn sample(pid: u32) -> Result<Sample> {
    let fields = stat_fields(pid)?;
    let tick = |i: usize| field(&fields, i);
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

/// CPU seconds of process `pid`, its reaped children (PostgreSQL's
/// postmaster reaps the backends of closed connections) and its live ones;
/// 0 if it is gone.
pub fn tree_cpu_s(pid: u32) -> f64 {
    let cpu = |f: &[String], fields: &[usize]| -> f64 {
        fields.iter().map(|i| field(f, *i).unwrap_or(0.0)).sum()
    };
    let Ok(own) = stat_fields(pid) else {
        return 0.0;
    };
    let mut ticks = cpu(&own, &[11, 12, 13, 14]);
    let parent = pid.to_string();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Ok(f) = stat_fields(child)
                && f.get(1) == Some(&parent)
            {
                ticks += cpu(&f, &[11, 12]);
            }
        }
    }
    ticks / TICKS_PER_SECOND
}
