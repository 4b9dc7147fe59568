//! The integration tests, one binary: each module a feature, driving the real broker (in process
//! on port 0, or the binary itself) against real or stand-in servers on loopback. One binary links
//! the dependency tree once instead of once per file.

mod helpers;

mod admin;
mod browser;
mod caching;
mod cli;
mod client_assertions;
mod contract;
mod cors;
mod deploy;
mod discovery;
mod hardening;
mod identity_forward;
mod identity_jwt;
mod interop_authlib;
mod interop_oidc_provider;
mod lifecycle;
mod monitoring;
mod no_secrets_in_logs;
mod operations;
mod proxy;
mod proxy_streams;
mod proxy_websocket;
mod public_tokens;
mod replicas;
mod resilience;
mod rotation;
mod structure;
mod token_route;
mod traces;
mod upstream_exchange;
