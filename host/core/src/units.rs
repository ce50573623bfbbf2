//! The JSON of [`Usage`] and [`GpuUsage`]: durations carry their unit in
//! the field name (`wall_time_us`, `gpu_time_us`); the names they had
//! before issue 18 (`wall_time`, `gpu_time`, the same microseconds) are
//! still written for older readers and read when the new ones are absent.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{GpuUsage, Usage};

/// [`Usage`] as JSON (see there).
#[derive(Serialize, Deserialize)]
pub(crate) struct UsageJson {
    #[serde(default)]
    wall_time_us: Option<u64>,
    /// Deprecated: `wall_time_us`.
    #[serde(default)]
    wall_time: Option<u64>,
    fuel_consumed: Option<u64>,
    peak_memory_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gpu: Option<GpuUsage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    http: Option<crate::HttpUsage>,
}

impl From<Usage> for UsageJson {
    fn from(u: Usage) -> Self {
        let us = micros(&u.wall_time);
        UsageJson {
            wall_time_us: Some(us),
            wall_time: Some(us),
            fuel_consumed: u.fuel_consumed,
            peak_memory_bytes: u.peak_memory_bytes,
            gpu: u.gpu,
            http: u.http,
        }
    }
}

impl TryFrom<UsageJson> for Usage {
    type Error = String;
    fn try_from(u: UsageJson) -> Result<Self, String> {
        let us = u
            .wall_time_us
            .or(u.wall_time)
            .ok_or("usage: missing field `wall_time_us`")?;
        Ok(Usage {
            wall_time: Duration::from_micros(us),
            fuel_consumed: u.fuel_consumed,
            peak_memory_bytes: u.peak_memory_bytes,
            gpu: u.gpu,
            http: u.http,
        })
    }
}

fn micros(d: &Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// [`GpuUsage`] as JSON (see there).
#[derive(Serialize, Deserialize)]
pub(crate) struct GpuUsageJson {
    adapter: String,
    zone: String,
    dispatches: u64,
    kernels: u64,
    bytes_allocated: u64,
    peak_bytes: u64,
    #[serde(default)]
    invocations: u64,
    #[serde(default)]
    bytes_transferred: u64,
    #[serde(default)]
    gpu_time_us: Option<u64>,
    /// Deprecated: `gpu_time_us`.
    #[serde(default)]
    gpu_time: Option<u64>,
    #[serde(default)]
    resident_bytes_used: u64,
    #[serde(default)]
    resident_bytes_uploaded: u64,
    #[serde(default)]
    kernels_cached: u64,
}

impl From<GpuUsage> for GpuUsageJson {
    fn from(g: GpuUsage) -> Self {
        let us = micros(&g.gpu_time);
        GpuUsageJson {
            adapter: g.adapter,
            zone: g.zone,
            dispatches: g.dispatches,
            kernels: g.kernels,
            bytes_allocated: g.bytes_allocated,
            peak_bytes: g.peak_bytes,
            invocations: g.invocations,
            bytes_transferred: g.bytes_transferred,
            gpu_time_us: Some(us),
            gpu_time: Some(us),
            resident_bytes_used: g.resident_bytes_used,
            resident_bytes_uploaded: g.resident_bytes_uploaded,
            kernels_cached: g.kernels_cached,
        }
    }
}

impl TryFrom<GpuUsageJson> for GpuUsage {
    type Error = String;
    fn try_from(g: GpuUsageJson) -> Result<Self, String> {
        let us = g
            .gpu_time_us
            .or(g.gpu_time)
            .ok_or("gpu usage: missing field `gpu_time_us`")?;
        Ok(GpuUsage {
            adapter: g.adapter,
            zone: g.zone,
            dispatches: g.dispatches,
            kernels: g.kernels,
            bytes_allocated: g.bytes_allocated,
            peak_bytes: g.peak_bytes,
            invocations: g.invocations,
            bytes_transferred: g.bytes_transferred,
            gpu_time: Duration::from_micros(us),
            resident_bytes_used: g.resident_bytes_used,
            resident_bytes_uploaded: g.resident_bytes_uploaded,
            kernels_cached: g.kernels_cached,
        })
    }
}
