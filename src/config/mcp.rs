//! `[mcp]`: the Model Context Protocol endpoint (`POST /mcp`).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct McpConfig {
    /// Serves `/mcp`; off, it is 404 like any unknown path.
    pub enabled: bool,
    /// Web origins whose pages may call `/mcp` (`https://app.example.com`). A request with an
    /// `Origin` header not listed is refused (403 `origin_not_allowed`): a page the user visits
    /// cannot drive the user's agent credentials (DNS rebinding). Requests without `Origin`
    /// (agents, SDKs, curl) are not affected.
    pub allowed_origins: Vec<String>,
}

impl Default for McpConfig {
    fn default() -> Self {
        McpConfig {
            enabled: true,
            allowed_origins: Vec::new(),
        }
    }
}
