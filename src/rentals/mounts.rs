//! What a rental asks of a volume (`volume` of `POST /v1/instances`): which of the caller's
//! volumes, and where it is mounted; checked here, attached by `rentals::volumes`.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::types::schema::NO_NUL;

/// `volume` of `POST /v1/instances`: a volume of the caller's to attach, and where.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[schemars(transform = crate::types::schema::request_body)]
#[schemars(rename = "VolumeAttach")]
#[serde(deny_unknown_fields)]
pub struct VolumeAttach {
    /// From `POST /v1/volumes`.
    #[schemars(length(min = 1, max = 64), pattern(NO_NUL))]
    pub id: String,
    /// An absolute Linux path (`/data`), not `/` itself.
    #[schemars(pattern(r"^/[A-Za-z0-9._/-]{1,255}$"))]
    pub mount_path: String,
}

impl VolumeAttach {
    pub fn check(&self) -> Result<()> {
        let ok = self.mount_path.len() >= 2
            && self.mount_path.len() <= 256
            && self.mount_path.starts_with('/')
            && self
                .mount_path
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b))
            && !self.mount_path.split('/').any(|s| s == "..");
        if !ok {
            return Err(Error::bad_request(
                "invalid `volume.mount_path`: an absolute path such as /data (letters, digits, . _ - /)",
            ));
        }
        if self.id.is_empty() || self.id.len() > 64 || self.id.contains('\0') {
            return Err(Error::bad_request(
                "invalid `volume.id`: a volume id from POST /v1/volumes",
            ));
        }
        Ok(())
    }
}
