//! Tollgate: an LLM gateway on Pingora.
//!
//! A request's path: `server` starts the Pingora service; `proxy` holds the `ProxyHttp` phases;
//! `api` parses and validates the client's body once; `routing` picks targets; `providers` speaks
//! each upstream dialect; `telemetry` records usage and writes the access log.

pub mod api;
pub mod cache;
pub mod config;
pub mod error;
pub mod governance;
pub mod providers;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod sim;
pub mod sse;
pub mod telemetry;
