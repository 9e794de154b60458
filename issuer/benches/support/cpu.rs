//! The machine's CPU time over a stretch of wall time, read from `/proc/stat`, for the
//! benches' cost per operation: core-seconds busy ÷ operations done.
//!
//! A rate alone does not say what an operation costs when the machine is not fully
//! busy (a closed loop waiting on fsyncs, say); the busy time does, and the costs of
//! two paths add up: a license can cost no less than a raw signature plus a request
//! that does nothing. Busy is `user + nice + system + irq + softirq` of the `cpu` line
//! (idle, iowait and steal are not); it is converted to core-seconds through the
//! line's own total, so the kernel's tick rate does not matter. Everything running on
//! the machine is counted, the load generator included, as it is in every ceiling.

use std::time::Instant;

use anyhow::{Context, Result};

/// One reading of `/proc/stat`.
#[derive(Clone, Copy, Debug)]
pub struct CpuSample {
    busy: u64,
    total: u64,
    cores: u32,
    at: Instant,
}

impl CpuSample {
    /// Reads the machine's counters now.
    pub fn now() -> Result<CpuSample> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let mut lines = stat.lines();
        let first = lines.next().unwrap_or_default();
        let fields: Vec<u64> = first
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .context("the cpu line of /proc/stat")?;
        anyhow::ensure!(
            first.starts_with("cpu ") && fields.len() >= 8,
            "unexpected first line of /proc/stat"
        );
        // user nice system idle iowait irq softirq steal [guest guest_nice]: guest time
        // is already inside user and nice.
        let busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6];
        let total: u64 = fields[..8].iter().sum();
        let cores = lines.filter(|l| is_core_line(l)).count();
        Ok(CpuSample {
            busy,
            total,
            cores: u32::try_from(cores)?.max(1),
            at: Instant::now(),
        })
    }

    /// Core-seconds the machine was busy between `self` and `later`.
    pub fn busy_until(&self, later: &CpuSample) -> f64 {
        let total = later.total.saturating_sub(self.total);
        if total == 0 {
            return 0.0;
        }
        let busy = later.busy.saturating_sub(self.busy) as f64;
        let elapsed = later.at.duration_since(self.at).as_secs_f64();
        busy / total as f64 * f64::from(self.cores) * elapsed
    }

    /// The machine's cores (the `cpuN` lines).
    pub fn cores(&self) -> u32 {
        self.cores
    }
}

/// `cpu0 …`, `cpu1 …` (not the machine's `cpu  …` total).
fn is_core_line(line: &str) -> bool {
    line.strip_prefix("cpu")
        .and_then(|rest| rest.split(' ').next())
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Machine core-microseconds per operation, or NaN without operations.
pub fn core_us_per_op(core_seconds: f64, ops: u64) -> f64 {
    if ops == 0 {
        f64::NAN
    } else {
        core_seconds * 1e6 / ops as f64
    }
}
