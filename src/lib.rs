//! tokenvault: an on-premises tokenization vault. It keeps personal data
//! in-country in an encrypted SQLite store and hands out tokens in its place.
//!
//! Dependencies point one way: `cli` and `http` call the engine in [`vault`],
//! which joins [`store`], [`crypto`] and [`policy`]. [`config`] reads the
//! file into typed values; [`normalize`], [`pii`] and [`phone`] are leaves
//! that all of them use. [`files`] streams bulk files through the engine for
//! `cli` and `http`.

pub mod audit;
pub mod backup;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod egress;
pub mod files;
pub mod harden;
pub mod http;
pub mod metrics;
pub mod normalize;
pub mod payload;
pub mod phone;
pub mod pii;
pub mod policy;
pub mod store;
pub mod telemetry;
pub mod vault;
