//! placeholder
/// placeholder
pub fn run() -> crate::Result<()> { Ok(()) }
