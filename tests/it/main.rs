//! Integration tests: the real `tokenvault` binary on 127.0.0.1, real files,
//! real SQLite, real TLS.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod activation;
mod allow_list;
mod api;
mod audit;
mod audit_gap;
mod auth_abuse;
mod backup;
mod cache;
mod clevertap;
mod config;
mod dev;
mod durability;
mod egress;
mod faults;
mod fidelity;
mod files;
mod keys;
mod leak;
mod logs;
mod memory;
mod metrics;
mod mtls;
mod node_library;
mod openapi;
mod pg_cluster;
mod phone_tokens;
mod postgres;
mod reload;
mod retention;
mod scan;
mod subjects;
mod support;
mod tamper;
mod tls;
mod upstream;
