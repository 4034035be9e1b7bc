pub mod rfc2136;
