//! Host configuration of the GPU adapters a node exposes (platform admin's
//! file, not tenant policy).
//!
//! ```toml
//! max_idle_devices = 2
//!
//! [[adapters]]
//! label = "gpu0-rabat"     # what runs and usage records call it
//! zone = "ma-rabat-1"      # residency zone of this entry
//! backend = "vulkan"       # optional: vulkan | metal | dx12 | gl
//! name = "llvmpipe"        # optional: case-insensitive substring of the adapter name
//! max_resident_bytes = 1073741824  # optional: resident weights kept between runs
//!
//! [[adapters]]             # the same physical adapter, exposed in a second zone
//! label = "gpu0-paris"
//! zone = "eu-paris-1"
//! backend = "vulkan"
//! name = "llvmpipe"
//! ```

use serde::{Deserialize, Serialize};

/// The GPU part of the host configuration. The default has no adapters: GPU
/// calls then answer `unavailable` (or `denied` without a `[gpu]` policy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpuConfig {
    /// Adapter entries, in order of preference.
    pub adapters: Vec<AdapterConfig>,
    /// Healthy devices kept per entry after a run, to be handed to the next
    /// run (creating one costs milliseconds). 0 = a fresh device every run.
    pub max_idle_devices: usize,
}

impl Default for GpuConfig {
    fn default() -> Self {
        GpuConfig {
            adapters: Vec::new(),
            max_idle_devices: 2,
        }
    }
}

/// One labelled adapter entry: a physical adapter (found by backend and
/// name) placed in a zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterConfig {
    /// Unique name of the entry, e.g. `gpu0-rabat`.
    pub label: String,
    /// Residency zone of the entry, e.g. `ma-rabat-1`.
    pub zone: String,
    /// Backend to match (`vulkan`, `metal`, `dx12`, `gl`); any when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// Case-insensitive substring of the adapter's name; any when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Largest buffer the host asks the device to support, whatever a
    /// tenant's quota says (the device's own limit applies when lower).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_buffer_bytes: Option<u64>,
    /// Bytes of dataset-backed buffers (resident weights) the entry's GPU
    /// processes may keep between runs, all tenants together
    /// ([`DEFAULT_RESIDENT_BYTES`] when absent; 0: nothing stays resident,
    /// `buffer-from-dataset` answers `out-of-quota`). Least recently used
    /// are evicted first; each tenant is also held to its policy's
    /// `gpu.max_resident_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_resident_bytes: Option<u64>,
}

/// Resident bytes of an adapter entry whose configuration names none.
pub const DEFAULT_RESIDENT_BYTES: u64 = 1 << 30;

impl AdapterConfig {
    /// An entry matching any adapter of `backend` whose name contains `name`.
    pub fn new(label: impl Into<String>, zone: impl Into<String>) -> Self {
        AdapterConfig {
            label: label.into(),
            zone: zone.into(),
            backend: None,
            name: None,
            max_buffer_bytes: None,
            max_resident_bytes: None,
        }
    }

    pub fn max_resident_bytes(mut self, bytes: u64) -> Self {
        self.max_resident_bytes = Some(bytes);
        self
    }

    pub fn backend(mut self, backend: impl Into<String>) -> Self {
        self.backend = Some(backend.into());
        self
    }

    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    pub(crate) fn matches(&self, backend: &str, name: &str) -> bool {
        let backend_ok = self
            .backend
            .as_deref()
            .is_none_or(|b| b.eq_ignore_ascii_case(backend));
        let name_ok = self
            .name
            .as_deref()
            .is_none_or(|n| name.to_ascii_lowercase().contains(&n.to_ascii_lowercase()));
        backend_ok && name_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_unknown_keys() {
        let c: GpuConfig = serde_json::from_str(
            r#"{"adapters":[{"label":"a","zone":"z-1","backend":"vulkan","name":"llvmpipe"}]}"#,
        )
        .expect("valid config");
        assert_eq!(c.adapters.len(), 1);
        assert_eq!(c.max_idle_devices, 2);
        assert!(serde_json::from_str::<GpuConfig>(r#"{"adapterz":[]}"#).is_err());
        assert!(
            serde_json::from_str::<GpuConfig>(r#"{"adapters":[{"label":"a","zone":"z","gpu":1}]}"#)
                .is_err()
        );
    }

    #[test]
    fn matching_is_by_backend_and_name_substring() {
        let name = "llvmpipe (LLVM 15.0.6, 256 bits)";
        let vk = "vulkan";
        assert!(AdapterConfig::new("a", "z").matches(vk, name));
        assert!(
            AdapterConfig::new("a", "z")
                .backend("Vulkan")
                .name("LLVMPIPE")
                .matches(vk, name)
        );
        assert!(!AdapterConfig::new("a", "z").backend("gl").matches(vk, name));
        assert!(
            !AdapterConfig::new("a", "z")
                .name("nvidia")
                .matches(vk, name)
        );
    }
}
