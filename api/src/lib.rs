//! Storefront: users, products and orders over HTTP, on SQLite, PostgreSQL or MariaDB/MySQL.

pub mod auth;
pub mod cache;
pub mod cli;
pub mod config;
pub mod db;
pub mod domain;
pub mod http;
pub mod metrics;
pub mod repo;
pub mod startup;
pub mod telemetry;
