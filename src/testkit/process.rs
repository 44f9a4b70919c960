//! A process's CPU time and memory, read from `/proc` (Linux): what the
//! benchmarks and image-soak report of the service and of themselves.

/// A memory figure (`VmRSS:`, `VmHWM:`) of process `pid` ("self" for this
/// one), in KiB; `None` when the process or the figure is gone.
pub fn status_kib(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Resets the peak resident memory (`VmHWM`) of process `pid` to its
/// current resident memory (only a process of this user's may be reset).
pub fn reset_peak(pid: &str) -> std::io::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
}

/// User + system CPU time of process `pid` so far, in seconds (at the
/// kernel's clock ticks, 10 ms); `None` when the process is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, after) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `after` starts at field 3.
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks as f64 / per_second)
}

/// User + system CPU seconds of this process so far (to the microsecond).
pub fn own_cpu_seconds() -> f64 {
    rusage_cpu_seconds(libc::RUSAGE_SELF)
}

/// User + system CPU seconds of this process's children that have ended
/// and been waited for (to the microsecond).
pub fn children_cpu_seconds() -> f64 {
    rusage_cpu_seconds(libc::RUSAGE_CHILDREN)
}

fn rusage_cpu_seconds(who: libc::c_int) -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        libc::getrusage(who, usage.as_mut_ptr());
        usage.assume_init()
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// How far this process's resident memory rose while `work` ran, in
/// bytes. Freed memory is handed back to the kernel first, so memory
/// earlier work left in the allocator is not reused unseen.
pub fn peak_growth<T>(work: impl FnOnce() -> T) -> (u64, T) {
    // SAFETY: malloc_trim only returns free memory to the kernel.
    unsafe { libc::malloc_trim(0) };
    reset_peak("self").expect("clear_refs");
    let figure = |field| status_kib("self", field).expect("a memory figure");
    let before = figure("VmRSS:");
    let result = work();
    let peak = figure("VmHWM:");
    (peak.saturating_sub(before) * 1024, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_allocation_shows_as_growth() {
        let (grown, held) = peak_growth(|| vec![1u8; 64 << 20]);
        assert!(grown >= 60 << 20, "grew by {grown} bytes");
        assert_eq!(held.len(), 64 << 20);
    }

    #[test]
    fn cpu_time_counts_work() {
        let before = own_cpu_seconds();
        let mut x = 0u64;
        while own_cpu_seconds() - before < 0.05 {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(cpu_seconds(std::process::id()).is_some_and(|s| s >= 0.04));
        assert_eq!(cpu_seconds(u32::MAX), None);
    }
}
