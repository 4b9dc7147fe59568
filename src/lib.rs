#![forbid(unsafe_code)]
//! token-broker: browser apps get OAuth2 client-credentials tokens without holding the client secret.

pub mod clock;
pub mod demo;
pub mod http;
pub mod identity;
pub mod metrics;
pub mod outbound;
pub mod policy;
pub mod public_tokens;
pub mod routes;
pub mod scope;
pub mod settings;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod timespan;
pub mod tokens;
pub mod upstream;
