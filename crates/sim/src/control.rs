//! What both simulators' `/_sim/` control APIs share: the path prefix, the body limit and
//! the JSON helpers. Each simulator's own endpoints live beside it (`lnvps/control.rs`,
//! `stablevps/control.rs`).

use http::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::http::Reply;

pub(crate) const PREFIX: &str = "/_sim";
pub(crate) const MAX_CONTROL_BODY: usize = 1024 * 1024;

pub fn is_control_path(path: &str) -> bool {
    path == PREFIX || path.starts_with("/_sim/")
}

pub(crate) fn error(status: StatusCode, msg: &str) -> Reply {
    Reply::json(status, &json!({ "error": msg }))
}

pub(crate) fn ok_json<T: serde::Serialize>(value: &T) -> Reply {
    Reply::json(StatusCode::OK, value)
}

pub(crate) fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Reply> {
    serde_json::from_slice(body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("bad JSON: {e}")))
}

/// Like [`parse`], but an empty body is the type's default.
pub(crate) fn parse_or_empty<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, Reply> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse(body)
}
