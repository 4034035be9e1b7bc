//! What the Postern gateway and its clients both speak: the declarative resources
//! (`kind/metadata/spec`, Octelium's field names) and the control API's wire types.

pub mod api;
pub mod netstack;
pub mod path;
pub mod resources;
pub mod wireguard;
