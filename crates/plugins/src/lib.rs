//! The built-in plugins, one folder each (config + handler + tests), and the explicit list
//! of them ([`BUILTIN`]). The contract they implement ([`Plugin`], [`Phase`], [`Flow`]) is
//! the vocabulary crate's.

pub mod consumers;
pub mod cors;
pub mod envoy_lua;
pub mod form_to_json;
pub mod headers;
pub mod health;
pub mod hmac_signature;
pub mod ip_restriction;
pub mod key_auth;
pub mod lua;
pub mod oidc;
pub mod pubsub_push;
mod query;
pub mod rate_limit;
pub mod request_termination;
pub mod security_headers;
#[cfg(test)]
mod testing;

pub mod claim_routing;
pub mod json_path;
pub mod json_transform;
pub mod jwt;

use std::sync::Arc;

use sluicegate_core::diag::{Diags, Path};
use sluicegate_core::yaml::Node;

pub use sluicegate_core::phase::{
    header_pair, parse_config, Flow, LocalResponse, Phase, PhaseSet, Plugin, PluginError, Step,
};

/// What a plugin factory may need while building an instance.
#[derive(Clone, Copy)]
pub struct BuildCtx<'a> {
    /// Directory that relative file names in the config are resolved against.
    pub base_dir: &'a std::path::Path,
    /// The secrets the configuration declares; resolve a plugin's
    /// [`SecretRef`](sluicegate_secrets::SecretRef) fields with it.
    pub secrets: &'a sluicegate_secrets::SecretStore,
    /// The name of the route whose `plugins` list holds the entry; `None` for a global
    /// plugin. Plugins that keep state across reloads (`rate_limit`) name it after this.
    pub route: Option<&'a str>,
    /// The user modules scripts `require` (`lua.package_path`); scripts are compiled
    /// against them ([`sluicegate_lua::Script::using`]).
    pub lua_modules: &'a std::sync::Arc<sluicegate_lua::Modules>,
    /// The configuration's consumers (`key_auth` and `jwt` with `consumers: true`).
    pub consumers: &'a std::sync::Arc<consumers::Consumers>,
}

/// Builds a plugin from its `config` node, recording every problem in `diags`.
pub type Factory = fn(
    config: &Node,
    path: &Path,
    ctx: &BuildCtx<'_>,
    diags: &mut Diags,
) -> Option<Arc<dyn Plugin>>;

/// A built-in plugin type.
pub struct Builtin {
    /// Name used in configuration.
    pub name: &'static str,
    /// Default priority: higher runs first within a phase (Kong's convention).
    pub priority: i32,
    /// Builds an instance.
    pub build: Factory,
}

/// Every built-in plugin. Adding one means adding its folder and one line here.
pub const BUILTIN: &[Builtin] = &[
    Builtin {
        name: "request_termination",
        priority: 2,
        build: request_termination::build,
    },
    Builtin {
        name: "headers",
        priority: 800,
        build: headers::build,
    },
    Builtin {
        name: "lua",
        priority: 1000,
        build: lua::build,
    },
    Builtin {
        name: "envoy_lua",
        priority: 1000,
        build: envoy_lua::build,
    },
    Builtin {
        name: "oidc",
        priority: 1700,
        build: oidc::build,
    },
    Builtin {
        name: "jwt",
        priority: 1450,
        build: jwt::build,
    },
    Builtin {
        name: "claim_routing",
        priority: 900,
        build: claim_routing::build,
    },
    Builtin {
        name: "json_transform",
        priority: 1050,
        build: json_transform::build,
    },
    Builtin {
        name: "key_auth",
        priority: 1250,
        build: key_auth::build,
    },
    Builtin {
        name: "health",
        priority: 1,
        build: health::build,
    },
    Builtin {
        name: "security_headers",
        priority: 700,
        build: security_headers::build,
    },
    Builtin {
        name: "pubsub_push",
        priority: 5,
        build: pubsub_push::build,
    },
    Builtin {
        name: "hmac_signature",
        priority: 1500,
        build: hmac_signature::build,
    },
    Builtin {
        name: "ip_restriction",
        priority: 3000,
        build: ip_restriction::build,
    },
    Builtin {
        name: "form_to_json",
        priority: 1100,
        build: form_to_json::build,
    },
    Builtin {
        name: "rate_limit",
        priority: 910,
        build: rate_limit::build,
    },
    Builtin {
        name: "cors",
        priority: 2000,
        build: cors::build,
    },
];

/// Looks up a built-in plugin type by name.
pub fn builtin(name: &str) -> Option<&'static Builtin> {
    BUILTIN.iter().find(|b| b.name == name)
}
