#![forbid(unsafe_code)]
//! token-broker: browser apps get OAuth2 client-credentials tokens without holding the client secret.
//!
//! The dependency rule: imports run one way, downwards, and never back.
//!
//! ```text
//! main ─► startup ─► routes, http::middleware ─► state ─► components ─► leaves
//!            └─────► settings ─────────────────────────► components' config types
//! components: identity, policy, tokens, upstream, public_tokens, http (policies, errors), metrics,
//!             telemetry, demo, status (the `status` command: outbound only)
//! leaves:     scope, timespan, clock, outbound
//! ```
//!
//! Each component owns its configuration type (`upstream/config.rs`, `identity/config.rs`, …);
//! `settings` only loads (file, then environment) and validates into them. Check with
//! `python3 ../shared/tools/module-cycles.py src` or the `module_imports_form_no_cycle` test.
//! Modules are public only where the binary, the integration tests or the benchmarks use them.

pub mod clock;
pub mod demo;
pub(crate) mod http;
pub mod identity;
pub mod metrics;
pub(crate) mod outbound;
pub mod policy;
pub(crate) mod proxy;
pub mod public_tokens;
pub(crate) mod routes;
pub mod scope;
pub mod settings;
pub mod startup;
pub(crate) mod state;
pub mod status;
pub mod telemetry;
pub mod timespan;
pub mod tokens;
pub mod upstream;
