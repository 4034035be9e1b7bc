pub mod proxy;
pub mod telemetry;
