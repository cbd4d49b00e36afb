//! Storefront: users, products and orders over HTTP, on SQLite, PostgreSQL, MariaDB/MySQL or MongoDB.

pub mod auth;
pub mod cache;
pub mod cli;
pub mod config;
pub mod domain;
pub mod http;
pub mod metrics;
pub mod relay;
pub mod startup;
pub mod state;
pub mod store;
pub mod telemetry;
