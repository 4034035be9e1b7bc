//! The fuzz targets' bodies: each `run` takes the fuzzer's bytes, drives one parser a
//! stranger reaches, and checks a property of the result (not only that nothing panics).
//! `fuzz_targets/<name>.rs` is the libFuzzer entry point of module `<name>`, and
//! `corpus/<name>/` its seed inputs. `scripts/fuzz` builds and runs them.

pub mod dns;
pub mod oauth2;
mod packets;
pub mod path;
pub mod policy;
pub mod resources;
pub mod socks5;
pub mod token;
pub mod wireguard;
