//! Present so that the build-dependencies in Cargo.toml take part in resolving features.

fn main() {}
