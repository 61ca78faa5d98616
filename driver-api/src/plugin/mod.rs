pub mod abi;
pub mod host;
pub mod wire;
