//! Configuration of the `json_transform` plugin.

use serde::Deserialize;

/// `config` of a `json_transform` plugin entry: a mapping for the request body, the
/// response body, or both.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonTransformConfig {
    /// Reshapes the request body before it goes upstream.
    pub request: Option<SideConfig>,
    /// Reshapes JSON response bodies before they go to the client.
    pub response: Option<SideConfig>,
}

/// The mapping of one side.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SideConfig {
    /// Start from a copy of the input (`true`) or from an empty object (`false`, default:
    /// only the listed fields go out).
    #[serde(default)]
    pub keep: bool,
    /// Paths removed from the output before `fields` are written (with `keep: true`;
    /// removing a field's `from` renames it).
    #[serde(default)]
    pub remove: Vec<String>,
    /// Output fields, written in order.
    #[serde(default)]
    pub fields: Vec<FieldConfig>,
    /// Request side: what to do with a body that is not JSON by its content type:
    /// `pass` (default) or `reject` (415).
    #[serde(default)]
    pub other_content_types: Others,
    /// Response side: largest body transformed; bigger bodies pass unchanged.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
}

/// One output field.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldConfig {
    /// Where the value goes in the output (`data.user_id`, `items[0].id`, `$` for all).
    pub to: String,
    /// Where the value comes from in the input.
    pub from: Option<String>,
    /// A constant value instead of `from` (`null` included).
    #[serde(default, deserialize_with = "present")]
    pub value: Option<serde_json::Value>,
    /// The value when `from` is missing (any JSON value, `null` included).
    #[serde(default, deserialize_with = "present")]
    pub default: Option<serde_json::Value>,
    /// Request side: a missing `from` (without `default`) is a 400.
    #[serde(default)]
    pub required: bool,
}

/// What happens to a request body whose content type is not JSON.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Others {
    /// Forwarded untouched.
    #[default]
    Pass,
    /// Refused with 415.
    Reject,
}

/// A key that is present, even with `null`, is `Some` (plain `Option` would read `null` as
/// absent).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

fn default_max_body() -> usize {
    1024 * 1024
}
